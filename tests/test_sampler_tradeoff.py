"""tools/sampler_tradeoff: NFE budgets -> steps, settings, prompt sets, and the JSON of a run on a tiny cascade."""
import json

import pytest
import torch

from minimagen.cascade import Cascade, tiny_cascade_config
from minimagen.data.domains import load_domain
from minimagen.samplers import nfe
from minimagen.tools import sampler_tradeoff as st


def test_heun_gets_the_most_steps_within_the_nfe_budget():
    # Heun: n steps cost 2n - 1 NFE, so a budget B allows n = (B + 1) // 2; the others: n = B
    assert [st.steps_for_nfe("heun", b) for b in (5, 10, 15, 25, 50, 100)] == [3, 5, 8, 13, 25, 50]
    assert [nfe("heun", st.steps_for_nfe("heun", b)) for b in (5, 10, 100)] == [5, 9, 99]
    assert [st.steps_for_nfe(s, 10) for s in ("ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler")] == [10] * 4
    with pytest.raises(ValueError, match="budget must be an int >= 1"):
        st.steps_for_nfe("ddim", 0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        st.steps_for_nfe("plms", 10)


def test_setting_gives_one_sampler_and_step_count_per_stage():
    assert st.parse_setting("dpmpp_2m_karras:15, ddim:5", 2) == (["dpmpp_2m_karras", "ddim"], [15, 5])
    with pytest.raises(ValueError, match="has 1 entries but the cascade has 2 stages"):
        st.parse_setting("ddim:50", 2)
    for bad in ("plms:10", "ddim:0", "ddim", "ddim:ten"):
        with pytest.raises(ValueError, match="must be sampler:steps"):
            st.parse_setting(bad, 1)


def test_prompts_are_split_evenly_over_the_domain_kinds():
    domain = load_domain("shapes")  # 4 kinds: single, single_heldout, two, two_heldout
    items = st.evaluation_prompts(domain, 6)  # 6 = 2 + 2 + 1 + 1
    assert len(items) == 6 and all(isinstance(c, str) for c, _ in items)
    assert [len(s.objects) for _, s in items] == [1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="--prompts must be >= 1"):
        st.evaluation_prompts(domain, 0)


class HashEncoder:
    """A text encoder without transformers (fast to import): 3 tokens of 16 numbers seeded by the caption."""
    name, embed_dim = "hash-16", 16

    def encode(self, captions):
        rows = [torch.randn(3, 16, generator=torch.Generator().manual_seed(sum(map(ord, c)))) for c in captions]
        return torch.stack(rows), torch.ones(len(captions), 3, dtype=torch.bool)


@pytest.fixture(scope="module")
def tiny_tool(tmp_path_factory):
    """The whole tool on an untrained 8 -> 16 px cascade: 2 prompts, 1 seed, ddim and heun at budgets 3 and 5.
    Returns a function running it again with extra arguments (same --out and --key), and the first JSON."""
    torch.manual_seed(0)
    cascade = Cascade(tiny_cascade_config((8, 16), text_encoder="hash-16", text_embed_dim=16),
                      text_encoder=HashEncoder())
    out = tmp_path_factory.mktemp("tiny") / "tradeoff.json"
    args = ["--cascade", "tiny", "--preset", "ci", "--prompts", "2", "--seeds", "1", "--samplers", "ddim,heun",
            "--nfe", "3,5", "--repeats", "1", "--batch-repeats", "1", "--speed-batch", "2", "--fd-real-draws", "1",
            "--out", str(out), "--key", "tiny", "--fast", "heun:2,ddim:2"]
    run = lambda *extra: st.main(args + list(extra), cascade=cascade)
    run()
    return run, json.loads(out.read_text())["tiny"]


@pytest.fixture(scope="module")
def tiny_run(tiny_tool):
    return tiny_tool[1]


def test_run_writes_every_part_with_its_nfe_bookkeeping(tiny_run):
    assert tiny_run["last_run"]["preset_setting"] == "dpmpp_2m:8,dpmpp_2m:4"  # the "ci" preset's, 2 stages
    assert set(tiny_run["stages"]) == {"0", "1"}
    for stage, entries in tiny_run["stages"].items():
        # ddim: budgets 3, 5 -> 3, 5 steps; heun: 2 steps (3 NFE), 3 steps (5 NFE)
        assert [(e["sampler"], e["steps"], e["nfe"]) for e in entries] == \
               [("ddim", 3, 3), ("ddim", 5, 5), ("heun", 2, 3), ("heun", 3, 5)]
        for e in entries:
            assert 0 <= e["alignment"] <= 1 and e["alignment_spread"] == 0  # one seed: no spread
            assert e["n_images"] == 2 and e["fd"] >= 0 and e["fd_real"] >= 0 and "color" in e["attributes"]
    assert [(c["setting"], c["nfe"]) for c in tiny_run["cascade"]] == [("preset", [8, 4]),
                                                                      ("heun:2,ddim:2", [3, 2])]
    speed = tiny_run["speed"]
    assert set(speed) == {"batch_1", "batch_2"}
    for batch in speed.values():
        assert set(batch) == {"preset", "heun:2,ddim:2"} and batch["preset"]["median_ratio_to_preset"] == 1.0
        assert len(batch["preset"]["times_s"]) == 1  # the warm-up round is not recorded
        assert batch["preset"]["median_cpu_s"] > 0


def test_a_rerun_keeps_the_measured_points_and_adds_none_twice(tiny_tool):
    run, first = tiny_tool
    again = run("--parts", "base,sr,cascade")  # every point is in the JSON already: nothing is sampled again
    assert again["stages"] == first["stages"] and again["cascade"] == first["cascade"]


def test_cli_rejects_bad_arguments(tmp_path):
    base = ["--cascade", str(tmp_path), "--out", str(tmp_path / "x.json")]
    for extra, message in ((["--parts", "base,plots"], "--parts takes"), (["--seeds", "0"], "must be >= 1"), (["--batch-repeats", "0"], "must be >= 1"),
                           (["--samplers", "ddim,plms"], "--samplers takes"), (["--nfe", "0,5"], "NFE budgets >= 1")):
        with pytest.raises(SystemExit, match=message):
            st.main(base + extra)
