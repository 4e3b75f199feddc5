"""CI: check that this environment holds every dependency of pyproject.toml at exactly its
lower bound (``name>=X`` installed as X), so that the test run after it proves the bounds.

    python .ci/check_lowest.py pyproject.toml
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib

from packaging.version import Version


def main(path: str) -> int:
    with open(path, "rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    wrong = []
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", req)
        if m is None:
            wrong.append(f"{req}: not of the form name>=version")
            continue
        name, low = m.groups()
        have = importlib.metadata.version(name)
        print(f"{name} {have} (lower bound {low})")
        if Version(have) != Version(low):
            wrong.append(f"{name}: {have} installed, the lower bound is {low}")
    for w in wrong:
        print("error:", w, file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
