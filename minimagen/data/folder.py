"""Your own images and captions: a folder dataset for `train_small --data DIR`.

Imagen learns from (image, caption) pairs; this file turns a plain folder into such pairs. Captions come
from, in order of preference:
  1. `captions.jsonl` in the folder, one JSON object per line: {"file": "cat.png", "caption": "a cat"}
  2. `captions.csv` in the folder, rows `file,caption` (a header row `file,caption` is optional;
     quote captions that contain commas, as any spreadsheet does when it saves CSV)
  3. otherwise a text file with the same stem beside each image: `cat.png` + `cat.txt`
Images are searched recursively; `file` entries are paths relative to the folder. Every image is
opened once at construction. Files that cannot be used are skipped, counted per reason in `skipped`
(reason -> file names) and reported in one warning: an image PIL cannot read, an image without a
caption, an empty caption, a mapping entry whose file is missing. If nothing usable is left (or the
folder is missing or has no images) construction raises a ValueError that names the folder.

Each image is made RGB (transparent pixels composited onto white), centre-cropped to a square and
resized with a bicubic filter to `image_size` (or to each size of a tuple, for a cascade). Pixel values
become [0, 1]: 8-bit channels / 255; 16-bit grayscale (Pillow's modes "I;16*", and "I" holding 0..65535)
/ 65535; 32-bit float ("F") as stored, which must be within [0, 1]. (Pillow itself reads 16-bit RGB(A)
PNGs as 8-bit RGB(A).) Converting a 16-bit image with Pillow's convert("RGB") would clip every value
above 255 to white: that is why these modes are scaled here. Images with other values are skipped
("unsupported pixel values"). Images far smaller than the largest stage size (a side below a quarter of
it) are used, but counted in one warning: they are upscaled more than 4x.

Map: IMAGE_EXTENSIONS -> read_captions -> load_image (gray_to_unit for high bit depths) -> ImageCaptionFolder.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAPPING_FILES = ("captions.jsonl", "captions.csv")  # checked in this order
REPORT_FIRST = 5  # file names listed per reason in the warning / error
SMALL_FRACTION = 4  # warn when an image's shorter side is below (largest stage size) / SMALL_FRACTION
HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # Pillow modes scaled by gray_to_unit
FIXES = {  # what to do about each reason a file is skipped (printed in the error)
    "unreadable image": "re-export or delete the files PIL cannot open",
    "unsupported pixel values": "save them as 8- or 16-bit PNG (float images must hold values in [0, 1])",
    "missing caption": "add captions.jsonl / captions.csv or a .txt with the same name beside each image",
    "empty caption": "write a caption for those images, or remove them",
    "missing file": "fix the file names in the caption file (paths relative to the folder)",
}


def read_captions(root: Path) -> dict[str, str] | None:
    """{relative file name: caption} from captions.jsonl / captions.csv in `root`, or None if neither
    exists (then each image's sidecar .txt is used). A malformed line raises a ValueError naming it."""
    jsonl, csv_path = root / MAPPING_FILES[0], root / MAPPING_FILES[1]
    if jsonl.is_file():
        mapping = {}
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                mapping[Path(entry["file"]).as_posix()] = str(entry["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{jsonl}, line {number}: expected {{\"file\": ..., \"caption\": ...}}, "
                                 f"got {line.strip()[:80]!r} ({err})") from err
        return mapping
    if csv_path.is_file():
        mapping = {}
        with csv_path.open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if not row or (number == 1 and [c.strip().lower() for c in row] == ["file", "caption"]):
                    continue
                if len(row) != 2:
                    raise ValueError(f"{csv_path}, line {number}: expected 2 columns file,caption, got "
                                     f"{len(row)}; quote captions that contain commas")
                mapping[Path(row[0].strip()).as_posix()] = row[1]
        return mapping
    return None


class UnsupportedPixelsError(ValueError):
    """An image whose pixel values minimagen cannot map to [0, 1] without guessing."""


def gray_to_unit(im: Image.Image, path: Path) -> Image.Image:
    """A 16-bit or 32-bit grayscale image as a float ("F") image with values in [0, 1]."""
    values = np.asarray(im, dtype=np.float64)  # [H, W]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if im.mode == "F":
        if low < 0 or high > 1:
            raise UnsupportedPixelsError(f"{path}: float image with values in [{low:g}, {high:g}]; minimagen "
                                         f"reads float images as [0, 1]: rescale it, or save it as 8/16-bit PNG")
        scale = 1.0
    else:  # "I;16*" always, "I" when it holds 16-bit data (how older Pillow reads 16-bit PNGs)
        if low < 0 or high > 65535:
            raise UnsupportedPixelsError(f"{path}: 32-bit integer image with values in [{low:g}, {high:g}], "
                                         f"not 16-bit data; save it as an 8- or 16-bit PNG")
        scale = 65535.0
    return Image.fromarray((values / scale).astype(np.float32))  # mode "F"; x / (2^16 - 1) for 16-bit


def load_image(path: Path, sizes: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Open `path`, make it RGB on white, centre-crop to a square, resize to each size:
    {size: [3, size, size] float32 in [0, 1]}. PIL's errors propagate (the caller reports them)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in HIGH_BIT_DEPTH:
            return _resized_gray(gray_to_unit(im, path), sizes)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im)                      # transparent -> white
        im = _centre_square(im.convert("RGB"))
        out = {}
        for s in sizes:
            arr = np.asarray(im.resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
            out[s] = torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # [s, s, 3] -> [3, s, s]
        return out


def _centre_square(im: Image.Image) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def _resized_gray(im: Image.Image, sizes: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """A float ("F") gray image in [0, 1] -> {size: [3, size, size]}, the gray copied to R, G and B."""
    im, out = _centre_square(im), {}
    for s in sizes:
        arr = np.asarray(im.resize((s, s), Image.Resampling.BICUBIC), dtype=np.float32)  # [s, s]
        gray = torch.from_numpy(arr.copy()).clamp(0, 1)  # bicubic overshoots a little at edges; 8-bit clips too
        out[s] = gray.expand(3, s, s).contiguous()  # [s, s] -> [3, s, s]
    return out


class ImageCaptionFolder(torch.utils.data.Dataset):
    """(image, caption) pairs from a folder (see the module docstring for the layout).

    image_size: an int gives items {"image": [3, s, s], "caption": str}; a tuple of ints gives
    {"images": {s: [3, s, s]}, "caption": str} (one cascade item at every stage's size).
    cache=True keeps the resized tensors from the construction-time check in memory (fast epochs for
    small folders: 4 * 3 * s^2 bytes per image and size).
    Attributes: files (relative names used), captions, skipped (reason -> relative names),
    small ((name, (width, height)) of the images used that are upscaled more than SMALL_FRACTION x).
    """

    def __init__(self, root, image_size: int | tuple[int, ...], cache: bool = False):
        self.root = Path(root)
        sizes = (image_size,) if isinstance(image_size, int) else tuple(image_size)
        if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ValueError(f"image_size={image_size!r}: use a positive int or a tuple of them")
        self.image_size, self.sizes = image_size, sizes
        if not self.root.is_dir():
            raise ValueError(f"ImageCaptionFolder: {str(self.root)!r} is not an existing folder; check the path "
                             f"(a relative path starts from {str(Path.cwd())!r})")
        images = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        mapping = read_captions(self.root)
        self.skipped: dict[str, list[str]] = {"unreadable image": [], "unsupported pixel values": [],
                                              "missing caption": [], "empty caption": [], "missing file": []}
        self.small: list[tuple[str, tuple[int, int]]] = []  # (file, (width, height)) upscaled > SMALL_FRACTION x
        if mapping is not None:
            self.skipped["missing file"] = sorted(set(mapping) - set(images))
        self.files, self.captions = [], []
        self._cache = [] if cache else None  # resized tensors per file, when cache=True
        for name in images:
            caption = self._caption(name, mapping)
            if caption is None:
                self.skipped["missing caption"].append(name)
                continue
            caption = " ".join(caption.split())                       # one line, single spaces
            if not caption:
                self.skipped["empty caption"].append(name)
                continue
            try:
                tensors = load_image(self.root / name, sizes)
                with Image.open(self.root / name) as im:  # reads the header only
                    width, height = im.size
            except UnsupportedPixelsError:
                self.skipped["unsupported pixel values"].append(name)
                continue
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):  # what PIL raises
                self.skipped["unreadable image"].append(name)
                continue
            if min(width, height) * SMALL_FRACTION < max(sizes):
                self.small.append((name, (width, height)))
            self.files.append(name)
            self.captions.append(caption)
            if self._cache is not None:
                self._cache.append(tensors)
        self.skipped = {reason: names for reason, names in self.skipped.items() if names}
        self._report(len(images))

    def _caption(self, name: str, mapping: dict[str, str] | None) -> str | None:
        if mapping is not None:
            return mapping.get(name)
        sidecar = (self.root / name).with_suffix(".txt")
        return sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None

    def _summary(self) -> str:
        return "; ".join(f"{reason}: {len(names)} ({', '.join(names[:REPORT_FIRST])}"
                         f"{', ...' if len(names) > REPORT_FIRST else ''})"
                         for reason, names in self.skipped.items())

    def _report(self, n_images: int) -> None:
        where = f"ImageCaptionFolder({str(self.root)!r})"
        if n_images == 0 and not self.skipped:
            raise ValueError(f"{where}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                             "recursively); put images with captions there (see minimagen/data/folder.py)")
        if not self.files:
            fixes = "; ".join(f"{reason}: {FIXES[reason]}" for reason in self.skipped)
            raise ValueError(f"{where}: no usable image-caption pairs out of {n_images} images; "
                             f"{self._summary()}. To fix — {fixes}")
        if self.skipped:
            warnings.warn(f"{where}: using {len(self.files)} of {n_images} images, skipped "
                          f"{self._summary()}", stacklevel=3)
        if self.small:
            examples = ", ".join(f"{name}: {w}x{h} px" for name, (w, h) in self.small[:REPORT_FIRST])
            warnings.warn(f"{where}: {len(self.small)} of {len(self.files)} images are far smaller than the "
                          f"largest stage size {max(self.sizes)} px (shorter side below 1/{SMALL_FRACTION} of it; "
                          f"{examples}{', ...' if len(self.small) > REPORT_FIRST else ''}); they are upscaled "
                          f"more than {SMALL_FRACTION}x and look blocky or blurred. Use larger images or a "
                          f"smaller image_size", stacklevel=3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        if self._cache is not None:
            tensors = self._cache[i]
        else:
            tensors = load_image(self.root / self.files[i], self.sizes)
        if isinstance(self.image_size, int):
            return {"image": tensors[self.image_size], "caption": self.captions[i]}
        return {"images": tensors, "caption": self.captions[i]}
