"""Copy an installed expert into the package as a shipped one: its manifest, and its adapter's
tensors packed as `adapter.npz` (the repository holds no model file; the GGUF adapter is
written from them into the model cache on first use, byte for byte the one trained).

    python scripts/ship_expert.py pal-math    # from $APPORTION_HOME/experts/pal-math
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path

from apportion.config import Settings
from apportion.experts.book import ADAPTER, MANIFEST, PACKED, SHIPPED, ExpertBook
from apportion.experts.convert import pack_adapter, unpack_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    args = parser.parse_args()
    expert = ExpertBook(Settings.load().home, shipped=None).find(args.name)
    source = expert.verify()
    target = SHIPPED / args.name
    target.mkdir(parents=True, exist_ok=True)
    pack_adapter(source, target / PACKED)
    with tempfile.TemporaryDirectory() as scratch:
        again = Path(scratch) / ADAPTER
        unpack_adapter(target / PACKED, again)
        digest = hashlib.sha256(again.read_bytes()).hexdigest()
    if digest != expert.manifest.adapter_sha256:
        raise SystemExit(f"the packed adapter does not give back {source} byte for byte")
    shutil.copyfile(expert.directory / MANIFEST, target / MANIFEST)
    print(f"shipped {args.name}: {target / PACKED} ({(target / PACKED).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
