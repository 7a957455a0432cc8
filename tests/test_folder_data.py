"""User folder dataset: good pairs load, bad files are reported and skipped, hopeless folders fail
with a message that names them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minimagen.data.folder import ImageCaptionFolder


def save_image(path, color=(255, 0, 0), size=(12, 12), mode="RGB"):
    Image.new(mode, size, color).save(path)


@pytest.fixture
def messy_folder(tmp_path):
    save_image(tmp_path / "good1.png")
    (tmp_path / "good1.txt").write_text("a red square\n")
    save_image(tmp_path / "good2.jpg", color=(0, 0, 255))
    (tmp_path / "good2.txt").write_text("a blue\nsquare")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "corrupt.txt").write_text("never used")
    save_image(tmp_path / "uncaptioned.png")
    save_image(tmp_path / "blank.png")
    (tmp_path / "blank.txt").write_text("   \n")
    (tmp_path / "notes.md").write_text("not an image, ignored")
    return tmp_path


def test_good_files_load_and_each_bad_file_is_reported_and_skipped(messy_folder):
    with pytest.warns(UserWarning) as record:
        ds = ImageCaptionFolder(messy_folder, image_size=8)
    assert ds.files == ["good1.png", "good2.jpg"] and len(ds) == 2
    assert ds.captions == ["a red square", "a blue square"]          # stripped, newline -> space
    assert ds.skipped == {"unreadable image": ["corrupt.png"], "missing caption": ["uncaptioned.png"],
                          "empty caption": ["blank.png"]}
    message = str(record[0].message)
    for text in ("2 of 5 images", "unreadable image: 1 (corrupt.png)", "missing caption: 1 (uncaptioned.png)",
                 "empty caption: 1 (blank.png)", str(messy_folder)):
        assert text in message
    item = ds[0]
    assert item["caption"] == "a red square" and item["image"].dtype == torch.float32
    assert torch.allclose(item["image"], torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 8, 8))


def test_image_is_center_cropped_then_resized(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)                  # 20 high, 40 wide
    pixels[:, :10] = (255, 0, 0)                                    # red left quarter
    pixels[:, 10:30] = (0, 255, 0)                                  # green middle half = the centre square
    pixels[:, 30:] = (0, 0, 255)                                    # blue right quarter
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("green")
    image = ImageCaptionFolder(tmp_path, image_size=8)[0]["image"]
    assert image.shape == (3, 8, 8)
    assert torch.equal(image, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 8, 8))


def test_tuple_of_sizes_gives_one_image_per_cascade_stage_and_cache_matches(tmp_path):
    save_image(tmp_path / "x.png", size=(30, 30))
    (tmp_path / "x.txt").write_text("x")
    item = ImageCaptionFolder(tmp_path, image_size=(8, 16))[0]
    assert set(item) == {"images", "caption"}
    assert item["images"][8].shape == (3, 8, 8) and item["images"][16].shape == (3, 16, 16)
    cached = ImageCaptionFolder(tmp_path, image_size=(8, 16), cache=True)[0]
    assert torch.equal(cached["images"][16], item["images"][16])


def test_transparent_pixels_become_white(tmp_path):
    save_image(tmp_path / "clear.png", color=(255, 0, 0, 0), mode="RGBA")   # red but fully transparent
    (tmp_path / "clear.txt").write_text("nothing")
    assert torch.equal(ImageCaptionFolder(tmp_path, image_size=4)[0]["image"], torch.ones(3, 4, 4))


def test_captions_jsonl_maps_files_and_reports_entries_without_a_file(tmp_path):
    (tmp_path / "sub").mkdir()
    save_image(tmp_path / "sub" / "a.png")
    save_image(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("ignored: the mapping file wins")
    lines = [{"file": "sub/a.png", "caption": "first"}, {"file": "b.png", "caption": "second"},
             {"file": "gone.png", "caption": "no such file"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.warns(UserWarning, match="missing file: 1 \\(gone.png\\)"):
        ds = ImageCaptionFolder(tmp_path, image_size=4)
    assert ds.files == ["b.png", "sub/a.png"] and ds.captions == ["second", "first"]


def test_captions_csv_with_header_and_quoted_commas(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "captions.csv").write_text('file,caption\na.png,"red, square, small"\n')
    ds = ImageCaptionFolder(tmp_path, image_size=4)
    assert ds.captions == ["red, square, small"] and ds.skipped == {}


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "ok"}\n{"file": "a.png"}\n')
    with pytest.raises(ValueError, match="captions.jsonl, line 2"):
        ImageCaptionFolder(tmp_path, image_size=4)


def test_all_bad_folder_fails_naming_the_folder(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"garbage")
    (tmp_path / "corrupt.txt").write_text("a caption")
    save_image(tmp_path / "uncaptioned.png")
    with pytest.raises(ValueError, match="no usable image-caption pairs") as err:
        ImageCaptionFolder(tmp_path, image_size=8)
    assert str(tmp_path) in str(err.value) and "unreadable image: 1 (corrupt.png)" in str(err.value)


def test_empty_and_missing_folders_fail_naming_the_folder(tmp_path):
    with pytest.raises(ValueError, match="no images found") as err:
        ImageCaptionFolder(tmp_path, image_size=8)
    assert str(tmp_path) in str(err.value)
    missing = tmp_path / "does_not_exist"
    with pytest.raises(ValueError, match="not an existing folder") as err:
        ImageCaptionFolder(missing, image_size=8)
    assert str(missing) in str(err.value)


def test_bad_image_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        ImageCaptionFolder(tmp_path, image_size=0)
