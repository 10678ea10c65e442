import pytest

from damselfly.api import convert
from damselfly.config import load_daemon_config
from damselfly.domain import (
    ByteRange,
    CandidateParent,
    DownloadSpec,
    HostInfo,
    HostType,
    NormalTask,
    PieceInfo,
)
from damselfly.errors import ConfigError


def test_config_accepts_dragonfly_camel_case_and_snake_case(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("download:\n  concurrentPieceCount: 8\n  bandwidthLimit: 1000\nseedPeer:\n  enable: true\n")
    c = load_daemon_config(f, {"storage": {"dir": str(tmp_path)}, "download": {"piece_timeout": 3}})
    assert c.download.concurrent_piece_count == 8 and c.download.bandwidth_limit == 1000
    assert c.seed_peer.enable and c.download.piece_timeout == 3
    assert c.socket_path == tmp_path / "dfdaemon.sock"


def test_flags_override_a_camel_case_file(tmp_path):
    # `damselfly daemon --seed --config f.yaml` where f.yaml has a seedPeer section:
    # the flag's snake_case override must merge into it, not sit beside it.
    f = tmp_path / "d.yaml"
    f.write_text("seedPeer:\n  superSeed: false\nstorage:\n  server:\n    tcpPort: 7000\n")
    cfg = load_daemon_config(f, {"seed_peer": {"enable": True}, "storage": {"server": {"tcp_port": 7100}}})
    assert cfg.seed_peer.enable is True and cfg.seed_peer.super_seed is False
    assert cfg.storage.server.tcp_port == 7100


def test_config_rejects_unknown_keys_clearly(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("download:\n  concurentPieceCount: 8\n")
    with pytest.raises(ConfigError, match="concurentPieceCount"):
        load_daemon_config(f)


def test_round_trips_through_protobuf():
    host = HostInfo(
        id="1.2.3.4-a",
        hostname="a",
        ip="1.2.3.4",
        port=4000,
        download_port=4005,
        type=HostType.SUPER_SEED,
        idc="idc1",
        location="a|b",
        max_tx_bandwidth=10,
    )
    assert convert.host_from_pb(convert.host_to_pb(host)) == host
    spec = DownloadSpec(
        url="http://x/y",
        digest="sha256:" + "a" * 64,
        tag="t",
        piece_length=4 << 20,
        timeout_s=2.5,
        range=ByteRange(1, 2),
        request_header={"Authorization": "x"},
    )
    assert convert.download_from_pb(convert.download_to_pb(spec)) == spec
    piece = PieceInfo(number=3, offset=12, length=4, digest="crc32:1", parent_id="p", cost_s=0.25)
    assert convert.piece_from_pb(convert.piece_to_pb(piece)) == piece
    answer = NormalTask([CandidateParent("p", host, "t", 100, 1)])
    assert convert.answer_from_pb(convert.answer_to_pb(answer)) == answer
