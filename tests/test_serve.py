"""The loopback server serves the toy files and frees its port on exit."""

import socket
import urllib.error
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cocu_core.toyworld import LoopbackServer, serve_directory, write_url_list


def _port_free(port: int) -> bool:
    """Nothing listens there any more, and a new server (SO_REUSEADDR, as http.server does) can bind it."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        pass
    finally:
        probe.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_serves_files_and_frees_port(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"\xff\xd8hello")
    with serve_directory(tmp_path) as srv:
        assert srv.host == "127.0.0.1" and srv.port > 0
        port = srv.port
        assert not _port_free(port)
        with urllib.request.urlopen(f"{srv.base_url}/images/a.jpg", timeout=5) as r:
            assert r.read() == b"\xff\xd8hello"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{srv.base_url}/images/missing.jpg", timeout=5)
        assert e.value.code == 404
    assert _port_free(port)


def test_port_freed_even_when_body_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with serve_directory(tmp_path) as srv:
            port = srv.port
            raise RuntimeError("boom")
    assert _port_free(port)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        LoopbackServer(tmp_path / "nope")


def test_url_list_parquet(tmp_path):
    pairs = pa.table({"key": ["k1", "k2"], "file": ["images/k1.jpg", "images/k2.jpg"], "caption": ["a", "b"]})
    write_url_list(pairs, "http://127.0.0.1:9", tmp_path / "urls.parquet", split_prefix="train")
    t = pq.read_table(tmp_path / "urls.parquet")
    assert t.column_names == ["url", "caption", "key"]
    assert t.column("url").to_pylist() == ["http://127.0.0.1:9/train/images/k1.jpg", "http://127.0.0.1:9/train/images/k2.jpg"]
