"""The download cache against a real local HTTP server: full download, resume, reuse, offline errors, archives."""

from __future__ import annotations

import io
import os
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sources.base import InputError
from sources.download import cache_path, extract, fetch, fetch_inputs
from tests.helpers import KEEP_TEXTS

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte value


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours Range unless ``server.ignore_range``; can cut the first response short."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if match and not server.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if server.cut_next:
            server.cut_next = False
            self.wfile.write(chunk[: len(chunk) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files = {"/data/file.bin": PAYLOAD}
    server.requests = []
    server.ignore_range = False
    server.cut_next = False
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _url(server, path="/data/file.bin"):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_full_download_then_reuse_without_network(http_server, tmp_path):
    url = _url(http_server)
    path = fetch(url, str(tmp_path), progress=False)
    assert path == cache_path(url, str(tmp_path))
    assert open(path, "rb").read() == PAYLOAD
    assert not os.path.exists(path + ".part")
    assert len(http_server.requests) == 1

    http_server.shutdown()  # a complete cached file needs no server
    assert fetch(url, str(tmp_path), progress=False) == path
    assert len(http_server.requests) == 1


def test_resumes_a_partial_download_with_a_range_request(http_server, tmp_path):
    url = _url(http_server)
    part = cache_path(url, str(tmp_path)) + ".part"
    os.makedirs(os.path.dirname(part))
    with open(part, "wb") as handle:
        handle.write(PAYLOAD[:300_000])
    path = fetch(url, str(tmp_path), progress=False)
    assert http_server.requests[-1]["range"] == "bytes=300000-"
    assert open(path, "rb").read() == PAYLOAD


def test_interrupted_download_keeps_the_part_and_the_next_run_resumes(http_server, tmp_path):
    url = _url(http_server)
    http_server.cut_next = True
    with pytest.raises(InputError) as error:
        fetch(url, str(tmp_path), progress=False)
    message = str(error.value)
    assert "\n" not in message and "pass --input PATH" in message and url in message
    part = cache_path(url, str(tmp_path)) + ".part"
    got = os.path.getsize(part)
    assert 0 < got < len(PAYLOAD)
    assert not os.path.exists(cache_path(url, str(tmp_path)))  # never renamed into place while short

    path = fetch(url, str(tmp_path), progress=False)
    assert http_server.requests[-1]["range"] == f"bytes={got}-"
    assert open(path, "rb").read() == PAYLOAD


def test_server_ignoring_the_range_restarts_from_zero(http_server, tmp_path):
    url = _url(http_server)
    http_server.ignore_range = True
    part = cache_path(url, str(tmp_path)) + ".part"
    os.makedirs(os.path.dirname(part))
    with open(part, "wb") as handle:
        handle.write(b"garbage that must not stay in front")
    path = fetch(url, str(tmp_path), progress=False)
    assert open(path, "rb").read() == PAYLOAD


def test_cached_file_with_the_wrong_size_is_downloaded_again(http_server, tmp_path):
    url = _url(http_server)
    path = fetch(url, str(tmp_path), progress=False)
    with open(path, "r+b") as handle:
        handle.truncate(1000)
    assert open(fetch(url, str(tmp_path), progress=False), "rb").read() == PAYLOAD
    assert len(http_server.requests) == 2


def test_sha256_mismatch_is_refused(http_server, tmp_path):
    with pytest.raises(InputError, match="sha256 mismatch"):
        fetch(_url(http_server), str(tmp_path), progress=False, sha256="0" * 64)
    assert not os.path.exists(cache_path(_url(http_server), str(tmp_path)))


def test_offline_and_http_errors_are_one_line(http_server, tmp_path):
    offline = f"http://127.0.0.1:{_free_port()}/nothing.tsv"
    with pytest.raises(InputError) as error:
        fetch(offline, str(tmp_path), timeout_s=5, progress=False)
    message = str(error.value)
    assert message.startswith(f"cannot download {offline}: ") and message.endswith("; pass --input PATH")
    assert "\n" not in message

    with pytest.raises(InputError, match=r"HTTP 404"):
        fetch(_url(http_server, "/missing.tsv"), str(tmp_path), progress=False)
    with pytest.raises(InputError, match="only http"):
        fetch("ftp://example.org/file", str(tmp_path), progress=False)


def test_no_lock_file_is_left_in_the_cache_after_a_failed_or_good_download(http_server, tmp_path):
    offline = f"http://127.0.0.1:{_free_port()}/nothing.tsv"
    with pytest.raises(InputError):
        fetch(offline, str(tmp_path), timeout_s=5, progress=False)
    with pytest.raises(InputError, match=r"HTTP 404"):
        fetch(_url(http_server, "/missing.tsv"), str(tmp_path), progress=False)
    http_server.cut_next = True
    with pytest.raises(InputError, match="run again to resume"):
        fetch(_url(http_server), str(tmp_path), progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*.lock")) == []
    assert os.path.getsize(cache_path(_url(http_server), str(tmp_path)) + ".part") > 0  # the resumable part stays
    fetch(_url(http_server), str(tmp_path), progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*.lock")) == []


def _fetch_quietly(url: str, cache_dir: str) -> str:
    return fetch(url, cache_dir, timeout_s=30, progress=False)


def test_two_processes_sharing_a_cache_download_once(http_server, tmp_path):
    import multiprocessing

    url = _url(http_server)
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        paths = pool.starmap(_fetch_quietly, [(url, str(tmp_path))] * 3)
    assert len(set(paths)) == 1 and open(paths[0], "rb").read() == PAYLOAD
    assert len(http_server.requests) == 1  # the lock made the others wait, then reuse the finished file
    assert list(tmp_path.rglob("*.lock")) == []


def test_archives_are_unpacked_once_and_safely(http_server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("bbc/business/001.txt", "Headline\n\nBody text here.\n")
    http_server.files["/bbc.zip"] = buffer.getvalue()

    class Download:
        cache_dir = str(tmp_path)
        timeout_s = 10

    [folder] = fetch_inputs([_url(http_server, "/bbc.zip")], Download, progress=False)
    assert open(os.path.join(folder, "bbc", "business", "001.txt")).read().startswith("Headline")
    assert extract(cache_path(_url(http_server, "/bbc.zip"), str(tmp_path)), str(tmp_path)) == folder

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as bundle:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        bundle.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(InputError, match="unsafe"):
        extract(str(evil), str(tmp_path))
    assert not (tmp_path / "outside.txt").exists()


def test_sources_download_their_default_inputs_into_the_cache(http_server, tmp_path, shared_data):
    from pipelines.core.config import DownloadConfig
    from sources.base import RunContext, expand_inputs
    from sources.readers import split_outcomes
    from sources.registry import get_source

    http_server.files["/quora_duplicate_questions.tsv"] = (
        shared_data / "quora" / "mini_quora_duplicate_questions.tsv").read_bytes()
    http_server.files["/qa_Appliances.json.gz"] = (shared_data / "amazon" / "qa_2016" / "qa_Appliances.json.gz"
                                                   ).read_bytes()
    download = DownloadConfig(cache_dir=str(tmp_path))
    expected = {"quora": ("/quora_duplicate_questions.tsv", 9998), "amazon": ("/qa_Appliances.json.gz", 9011)}
    for name, (path, rows) in expected.items():
        source = get_source(name)
        config = source.config_model(urls=[_url(http_server, path)])
        inputs = source.default_inputs(config, download)
        assert inputs == [cache_path(_url(http_server, path), str(tmp_path))]
        pairs, rejects = split_outcomes(source.read(expand_inputs(inputs), config, RunContext(name,
                                                                                              KEEP_TEXTS)).run_local())
        assert len(pairs) + len(rejects) == rows
    with pytest.raises(InputError, match="source.urls is empty"):
        get_source("quora").default_inputs(get_source("quora").config_model(urls=[]), download)
    with pytest.raises(InputError, match="--source jsonl: no --input given and source.urls is empty; pass --input PATH"):
        get_source("jsonl").default_inputs(get_source("jsonl").config_model(), download)


def test_an_archive_over_the_size_bound_is_refused_before_writing(tmp_path):
    import zipfile

    from sources.base import InputError
    from sources.download import extract

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("zeros.txt", b"\0" * 2_000_000)  # 2 MB of zeros compresses to a few kB
    assert archive.stat().st_size < 20_000
    with pytest.raises(InputError, match="over the 1,000,000 byte limit"):
        extract(str(archive), str(tmp_path / "cache"), max_bytes=1_000_000)
    assert not list((tmp_path / "cache").rglob("zeros.txt"))
