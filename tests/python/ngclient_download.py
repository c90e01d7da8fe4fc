"""Downloads one target from a seeder-made repository with python-tuf's ngclient.

Usage: ngclient_download.py REPO_DIR TRUSTED_ROOT TARGET_PATH OUT_FILE

Serves REPO_DIR over HTTP on 127.0.0.1 (an ephemeral port) from a thread in this process,
then runs the standard TUF client workflow against it (see ngclient_mirror.download):
refresh, look the target up, download it with hash and length checks. Exit 0 on success;
any TUF error exits non-zero.
"""
import functools
import http.server
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ngclient_mirror import download  # noqa: E402


def main() -> int:
    repo_dir, trusted_root, target_path, out_file = sys.argv[1:5]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=repo_dir)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return download(f"http://127.0.0.1:{server.server_address[1]}", trusted_root, target_path, out_file)
    finally:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
