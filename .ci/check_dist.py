"""CI: check that the built wheel and sdist hold what an installation needs: the compiled
extension (wheel), the C sources (sdist), the bundled data and pretrained networks, the
licence.

    python .ci/check_dist.py dist/xpcnn-*.whl dist/xpcnn-*.tar.gz
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile

BOTH = [
    r"xpcnn/py\.typed",
    r"xpcnn/data/mnist_sample\.npz",
    r"xpcnn/data/SAMPLE\.md",
    r"xpcnn/pretrained/PROVENANCE\.json",
    r"xpcnn/pretrained/simple\.npz",
    r"xpcnn/pretrained/deep\.npz",
]
WHEEL = [*BOTH, r"xpcnn/_fast/_conv\.[^/]*(so|pyd)", r"xpcnn-[^/]*\.dist-info/licenses/LICENSE"]
SDIST = [*BOTH, r"xpcnn/_fast/_conv\.c", r"xpcnn/_fast/_conv_kernels\.h", r"LICENSE", r"setup\.py"]


def main(paths: list[str]) -> int:
    missing = []
    for path in paths:
        if path.endswith(".whl"):
            names, wanted = zipfile.ZipFile(path).namelist(), WHEEL
        else:
            names = [n.split("/", 1)[1] for n in tarfile.open(path).getnames() if "/" in n]
            wanted = SDIST
        for pattern in wanted:
            if not any(re.fullmatch(pattern, n) for n in names):
                missing.append(f"{path}: nothing matches {pattern}")
        print(f"{path}: {len(names)} files")
    for m in missing:
        print("error:", m, file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
