"""Downloads one target from a seeder-made repository with python-tuf's ngclient.

Usage: ngclient_download.py REPO_DIR TRUSTED_ROOT TARGET_PATH OUT_FILE

Serves REPO_DIR over HTTP on 127.0.0.1 (an ephemeral port) from a thread in this process,
then runs the standard TUF client workflow against it: refresh, look the target up, download
it with hash and length checks. Exit 0 on success; any TUF error exits non-zero.
"""
import functools
import http.server
import inspect
import os
import shutil
import sys
import tempfile
import threading

from tuf.ngclient import Updater


def main() -> int:
    repo_dir, trusted_root, target_path, out_file = sys.argv[1:5]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=repo_dir)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with tempfile.TemporaryDirectory() as work:
            metadata_dir = os.path.join(work, "metadata")
            os.makedirs(metadata_dir)
            with open(trusted_root, "rb") as f:
                root_bytes = f.read()
            # python-tuf 7 takes the trusted root as `bootstrap`; older releases read
            # metadata_dir/root.json.
            shutil.copy(trusted_root, os.path.join(metadata_dir, "root.json"))
            kwargs = {}
            if "bootstrap" in inspect.signature(Updater.__init__).parameters:
                kwargs["bootstrap"] = root_bytes
            updater = Updater(
                metadata_dir=metadata_dir,
                metadata_base_url=f"{base}/metadata/",
                target_dir=work,
                target_base_url=f"{base}/targets/",
                **kwargs,
            )
            updater.refresh()
            info = updater.get_targetinfo(target_path)
            if info is None:
                print(f"target {target_path} not found", file=sys.stderr)
                return 2
            path = updater.download_target(info, os.path.join(work, "download"))
            shutil.copy(path, out_file)
            custom = info.custom.get("otamesh", {})
            print(f"downloaded {target_path}: {info.length} bytes, release {custom.get('name')} {custom.get('version')}")
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
