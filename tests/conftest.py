"""Shared fixtures. Tests that need LFW skip with a reason when ../shared/data is absent."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
LFW_DIR = Path(os.environ.get("FACEVERIFY_LFW_DIR", ROOT.parent / "shared" / "data" / "lfw"))
LFW_IMAGES = LFW_DIR / "lfw-deepfunneled"

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Apps built in-process read unset settings from the environment: their galleries go to a
# throwaway file, never to the repository's data/ (servers in a subprocess get their own,
# bench.server.Server).
os.environ.setdefault("FACEVERIFY_GALLERY_URL",
                      f"sqlite:///{tempfile.mkdtemp(prefix='faceverify-gallery-')}/gallery.db")


def lfw_or_skip() -> Path:
    if not LFW_IMAGES.is_dir():
        pytest.skip(f"LFW not found at {LFW_IMAGES} (set FACEVERIFY_LFW_DIR; see README)")
    return LFW_IMAGES


@pytest.fixture(scope="session")
def lfw_images() -> Path:
    return lfw_or_skip()


def lfw_photo(name: str, index: int = 1) -> Path:
    return lfw_or_skip() / name / f"{name}_{index:04d}.jpg"


@pytest.fixture(scope="session")
def pipeline():
    from model.face.pipeline import FacePipeline
    return FacePipeline(device="cpu")


# Identities with many LFW photos: a small but real identity-folder dataset for fast tests.
SMALL_IDENTITIES = [
    "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "George_W_Bush", "Gerhard_Schroeder",
    "Ariel_Sharon", "Hugo_Chavez", "Junichiro_Koizumi", "Jean_Chretien", "John_Ashcroft",
    "Jacques_Chirac", "Serena_Williams", "Vladimir_Putin", "Luiz_Inacio_Lula_da_Silva",
    "Gloria_Macapagal_Arroyo", "Jennifer_Capriati", "Lleyton_Hewitt", "Laura_Bush",
    "Alejandro_Toledo", "Hans_Blix",
]
IMAGES_PER_IDENTITY = 6


@pytest.fixture(scope="session")
def small_lfw(tmp_path_factory) -> Path:
    """A temporary LFW-style folder (symlinks to real photos) with its own pairs files:
    pairs.txt with 4 folds of 2 same + 2 different pairs, and View 1 files."""
    src = lfw_or_skip()
    root = tmp_path_factory.mktemp("small_lfw")
    images = root / "lfw-deepfunneled"
    for name in SMALL_IDENTITIES:
        (images / name).mkdir(parents=True)
        for i in range(1, IMAGES_PER_IDENTITY + 1):
            f = f"{name}_{i:04d}.jpg"
            (images / name / f).symlink_to(src / name / f)
    same = [f"{n}\t1\t2" for n in SMALL_IDENTITIES[:8]]
    diff = [f"{a}\t3\t{b}\t4" for a, b in zip(SMALL_IDENTITIES[:8], SMALL_IDENTITIES[10:18])]
    folds = [same[2 * k:2 * k + 2] + diff[2 * k:2 * k + 2] for k in range(4)]
    (root / "pairs.txt").write_text("4\t2\n" + "\n".join(sum(folds, [])) + "\n")
    dev_same = [f"{n}\t5\t6" for n in SMALL_IDENTITIES[:6]]
    dev_diff = [f"{a}\t5\t{b}\t6" for a, b in zip(SMALL_IDENTITIES[:6], SMALL_IDENTITIES[6:12])]
    (root / "pairsDevTrain.txt").write_text("6\n" + "\n".join(dev_same + dev_diff) + "\n")
    (root / "pairsDevTest.txt").write_text("6\n" + "\n".join(dev_same + dev_diff) + "\n")
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("aligned_cache")


@pytest.fixture(scope="session")
def small_aligned(small_lfw, cache_dir):
    from model.train.data import load_aligned_folder
    return load_aligned_folder(small_lfw / "lfw-deepfunneled", "lfw", cache_dir=cache_dir,
                               workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_weights(small_lfw, cache_dir, tmp_path_factory) -> Path:
    """A small real encoder from a short real training run (~20 s), for the service tests."""
    from tests.service_support import train_tiny_encoder
    return train_tiny_encoder(small_lfw, cache_dir, tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (bench/postgres.py); `postgres.database()` gives
    each test an empty database of its own."""
    from bench.postgres import NoPostgres, Postgres
    try:
        server = Postgres()
    except NoPostgres as exc:
        pytest.skip(str(exc))
    with server as pg:
        yield pg
