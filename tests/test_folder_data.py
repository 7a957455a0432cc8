"""User folder dataset: good pairs load, bad files are reported and skipped, hopeless folders fail
with a message that names them."""
import json
import struct
import zlib

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


# ---- high bit depth and tiny images ----------------------------------------------------------------------
def write_png16(path, pixels: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit RGB): color_type 0 gray, 2 RGB, 6 RGBA."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16_bit_grayscale_png_is_scaled_to_unit_range_not_white(tmp_path):
    write_png16(tmp_path / "gray.png", np.full((8, 8), 16384, dtype=np.uint16), color_type=0)  # 16384 / 65535
    (tmp_path / "gray.txt").write_text("a dark gray square")
    assert Image.open(tmp_path / "gray.png").mode.startswith("I;16")
    image = ImageCaptionFolder(tmp_path, image_size=4)[0]["image"]
    torch.testing.assert_close(image, torch.full((3, 4, 4), 16384 / 65535))  # before the fix: all 1.0


def test_16_bit_gradient_keeps_every_gray_level(tmp_path):
    ramp = np.repeat((np.arange(16) * 4369).astype(np.uint16)[None, :], 16, axis=0)  # 0 .. 65535 in 15 equal steps
    write_png16(tmp_path / "ramp.png", ramp, color_type=0)
    (tmp_path / "ramp.txt").write_text("a ramp")
    row = ImageCaptionFolder(tmp_path, image_size=16)[0]["image"][:, 0]  # top row, [3, 16], at its own size
    torch.testing.assert_close(row, (torch.arange(16) / 15).expand(3, 16))  # 4369 k / 65535 = k / 15


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    pixels = np.zeros((8, 8, 3), dtype=np.uint16)
    pixels[..., 0], pixels[..., 2] = 65535, 32896  # full red, half blue (32896 = 128 * 257)
    write_png16(tmp_path / "rgb.png", pixels, color_type=2)
    (tmp_path / "rgb.txt").write_text("purple")
    image = ImageCaptionFolder(tmp_path, image_size=4)[0]["image"]
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]))


def test_float_images_are_read_as_unit_range_and_out_of_range_ones_are_skipped(tmp_path):
    Image.fromarray(np.full((8, 8), 0.75, dtype=np.float32)).save(tmp_path / "ok.tif")
    Image.fromarray(np.full((8, 8), 300.0, dtype=np.float32)).save(tmp_path / "hdr.tif")
    for name in ("ok", "hdr"):
        (tmp_path / f"{name}.txt").write_text(name)
    with pytest.warns(UserWarning, match=r"unsupported pixel values: 1 \(hdr.tif\)"):
        ds = ImageCaptionFolder(tmp_path, image_size=4)
    assert ds.files == ["ok.tif"]
    torch.testing.assert_close(ds[0]["image"], torch.full((3, 4, 4), 0.75))


def test_images_far_smaller_than_the_stage_size_are_used_but_counted_in_one_warning(tmp_path):
    save_image(tmp_path / "dot.png", size=(1, 1))
    save_image(tmp_path / "small.png", size=(3, 5))   # shorter side 3 < 16 / 4
    save_image(tmp_path / "fine.png", size=(4, 4))    # 4 is exactly a quarter: not warned about
    for name in ("dot", "small", "fine"):
        (tmp_path / f"{name}.txt").write_text(name)
    with pytest.warns(UserWarning) as record:
        ds = ImageCaptionFolder(tmp_path, image_size=(8, 16))
    messages = [str(w.message) for w in record if "far smaller" in str(w.message)]
    assert len(messages) == 1 and len(ds) == 3
    assert "2 of 3 images" in messages[0] and "dot.png: 1x1 px" in messages[0] and "small.png: 3x5 px" in messages[0]
    assert "16 px" in messages[0] and str(tmp_path) in messages[0]
