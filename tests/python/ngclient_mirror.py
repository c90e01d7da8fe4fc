"""Downloads one target with python-tuf's ngclient through an existing HTTP mirror.

Usage: ngclient_mirror.py BASE_URL TRUSTED_ROOT TARGET_PATH OUT_FILE

Unlike ngclient_download.py, this serves nothing: it points a stock TUF client at a mirror
someone else runs (an edge node's operations endpoint), with metadata at BASE_URL/metadata/
and targets at BASE_URL/targets/, and runs refresh, target lookup and a hash- and
length-checked download. Exit 0 on success; a missing target exits 2; any TUF error exits
non-zero with python-tuf's traceback.
"""
import inspect
import os
import shutil
import sys
import tempfile

from tuf.ngclient import Updater


def download(base_url: str, trusted_root: str, target_path: str, out_file: str) -> int:
    """Refresh from `base_url` starting at `trusted_root`, download `target_path` to
    `out_file`. Returns 0, or 2 when the target is not in the signed metadata."""
    base_url = base_url.rstrip("/")
    with tempfile.TemporaryDirectory() as work:
        metadata_dir = os.path.join(work, "metadata")
        os.makedirs(metadata_dir)
        with open(trusted_root, "rb") as f:
            root_bytes = f.read()
        # python-tuf 7 takes the trusted root as `bootstrap`; older releases read
        # metadata_dir/root.json, so provide both.
        shutil.copy(trusted_root, os.path.join(metadata_dir, "root.json"))
        kwargs = {}
        if "bootstrap" in inspect.signature(Updater.__init__).parameters:
            kwargs["bootstrap"] = root_bytes
        updater = Updater(
            metadata_dir=metadata_dir,
            metadata_base_url=f"{base_url}/metadata/",
            target_dir=work,
            target_base_url=f"{base_url}/targets/",
            **kwargs,
        )
        updater.refresh()
        info = updater.get_targetinfo(target_path)
        if info is None:
            print(f"target {target_path} not found", file=sys.stderr)
            return 2
        path = updater.download_target(info, os.path.join(work, "download"))
        shutil.copy(path, out_file)
        print(f"downloaded {target_path} through {base_url}: {info.length} bytes")
    return 0


def main() -> int:
    return download(*sys.argv[1:5])


if __name__ == "__main__":
    sys.exit(main())
