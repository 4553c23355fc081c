"""The fpga driver end to end against the software card model, its errors, and `vrex-edge accel`."""

from __future__ import annotations

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from vrex_edge.accel import DreEmuBackend, get_backend, hyperplanes
from vrex_edge.accel.fpga import FpgaBackend, XdmaFiles
from vrex_edge.accel.fpga.driver import PREFIX_ENV, DreDriver
from vrex_edge.accel.fpga.model import DreCardModel
from vrex_edge.accel.fpga.regs import DRE_ID, Desc, Op, Reg
from vrex_edge.cli import app
from vrex_edge.errors import AccelError

runner = CliRunner()


@pytest.fixture
def card(tmp_path):
    with DreCardModel(tmp_path) as c:
        yield c


def test_no_device_node_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(PREFIX_ENV, str(tmp_path / "xdma7"))
    with pytest.raises(AccelError, match=r"no XDMA device: .*xdma7_user, .*xdma7_h2c_0, .*xdma7_c2h_0 not found"):
        get_backend("fpga")


def test_registers_and_descriptor_round_trip(card):
    io = XdmaFiles(card.prefix)
    try:
        assert io.read32(Reg.ID) == DRE_ID
        io.write32(Reg.SCRATCH, 0xDEADBEEF)
        assert io.read32(Reg.SCRATCH) == 0xDEADBEEF
        io.dma_write(0x2000, b"abc" * 100)
        assert io.dma_read(0x2000, 300) == b"abc" * 100  # h2c and c2h reach the same card memory
    finally:
        io.close()
    d = Desc(Op.SCORE, 7, n=3, m=30, c=1000, hd=64, p0=58982, in0=0x1000, out1=0x9000, flags=1)
    raw = d.pack()
    assert len(raw) == 64 and Desc.unpack(raw) == (b"DREC", d)


def test_backend_matches_the_emulator_bit_for_bit(card):
    rng = np.random.default_rng(0)
    fpga, emu = FpgaBackend(card.prefix), DreEmuBackend()
    try:
        keys = (rng.standard_normal((3, 40, 64)) * 3).astype(np.float32)
        planes = hyperplanes(1, 3, 96, 64)
        codes = fpga.hash_codes(keys, planes)
        assert np.array_equal(codes, emu.hash_codes(keys, planes))
        for h in range(3):
            kw = dict(threshold=20, max_size=5, horizon=7)
            a = fpga.cluster_assign(codes[h, 10:], codes[h, :10], np.arange(1, 11), **kw)
            assert np.array_equal(a, emu.cluster_assign(codes[h, 10:], codes[h, :10], np.arange(1, 11), **kw))
        for tau in (0.5, 0.9, 1.0):
            q = rng.standard_normal((3, 30, 64)).astype(np.float32)
            reps = rng.standard_normal((3, 700, 64)).astype(np.float32)
            counts = rng.integers(0, 33, (3, 700))
            k1, m1 = fpga.score_select(q, reps, counts, tau=tau)
            k2, m2 = emu.score_select(q, reps, counts, tau=tau)
            assert np.array_equal(k1, k2) and np.array_equal(m1, m2)
        length = rng.integers(1, 9, 300)
        start = np.concatenate([[0], np.cumsum(length)[:-1]])[rng.permutation(300)]
        for k in (0, 1, 120):
            sel = rng.choice(300, k, replace=False)
            assert np.array_equal(fpga.layout(sel, start, length), emu.layout(sel, start, length))
        fs, es = fpga.stats(), emu.stats()
        for unit in ("hash", "assign", "layout"):  # the card's CYCLES registers carry the same model
            assert fs["cycles"][unit] == es["cycles"][unit] and fs["calls"][unit] == es["calls"][unit]
        assert fs["cycles"]["score"] == es["cycles"]["score"] + es["cycles"]["wicsum"]  # one SCORE command
    finally:
        fpga.close()


def test_resv_policy_on_the_card_matches_the_emulator(card, monkeypatch):
    from tests.test_dre import run_policy

    monkeypatch.setenv(PREFIX_ENV, card.prefix)
    s1, o1 = run_policy("fpga", 25, 0)
    s2, o2 = run_policy("dre-emu", 25, 0)
    for a, b in zip(s1, s2, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(o1, o2, strict=True))
    assert card.commands > 25


def test_wrong_device_id(tmp_path):
    with DreCardModel(tmp_path, faults=["bad_id"]) as c:
        with pytest.raises(AccelError, match=r"device ID 0x10ee9038 is not a DRE \(expected 0x44524531"):
            FpgaBackend(c.prefix)


def test_timeout_resets_the_card(tmp_path):
    with DreCardModel(tmp_path, faults=["timeout"]) as c:
        b = FpgaBackend(c.prefix, timeout_s=0.2)
        with pytest.raises(
            AccelError,
            match=r"DRE timed out after 0.2 s on LAYOUT \(seq 1, status 0x[01]\): the card did not finish; it "
            r"was reset",
        ):
            b.layout(np.array([0]), np.array([0]), np.array([4]))
        b.close()


def test_bad_status_is_decoded(tmp_path):
    with DreCardModel(tmp_path, faults=["status"]) as c:
        b = FpgaBackend(c.prefix)
        with pytest.raises(AccelError, match=r"DRE reported error 5 \(INTERNAL\) on HASH"):
            b.hash_codes(np.ones((2, 4, 64), np.float32), hyperplanes(0, 2, 32, 64))
        b.close()


def test_short_dma_read(tmp_path):
    with DreCardModel(tmp_path, faults=["short_dma"]) as c:
        b = FpgaBackend(c.prefix)
        with pytest.raises(AccelError, match=r"short DMA read from card 0x[0-9a-f]+: got \d+ of 16 bytes"):
            b.layout(np.array([0]), np.array([0]), np.array([4]))
        b.close()


def test_device_side_errors_surface(card):
    drv = DreDriver(card.prefix)
    try:
        with pytest.raises(AccelError, match=r"error 2 \(BAD_OPCODE\) on opcode 9"):
            drv.run(Desc(9, 0), [], [])
        with pytest.raises(AccelError, match=r"error 4 \(BAD_DIMS\) on ASSIGN"):
            drv.run(Desc(Op.ASSIGN, 0, m=1, bits=63), [b"\0" * 8], [4])
        with pytest.raises(AccelError, match=r"needs \d+ bytes of card memory, the card has 67108864"):
            drv.run(Desc(Op.LAYOUT, 0), [bytes(64 << 20)], [])
        outs, n = drv.run(
            Desc(Op.LAYOUT, 0, m=1, c=1),
            [np.array([0], np.uint32).tobytes(), np.array([8], np.int64).tobytes(), np.array([4], np.int64).tobytes()],
            [16],
        )
        assert n == 1 and np.frombuffer(outs[0], np.int64).tolist() == [8, 12]  # the card still works
    finally:
        drv.close()


def test_accel_list_and_probe(tmp_path, monkeypatch):
    monkeypatch.setenv(PREFIX_ENV, str(tmp_path / "xdma0"))
    r = runner.invoke(app, ["accel", "list"])
    assert r.exit_code == 0, r.output
    lines = {ln.split()[0]: ln for ln in r.output.splitlines()}
    assert "available" in lines["host"] and "available" in lines["dre-emu"]
    assert "unavailable" in lines["fpga"] and "xdma0_user" in lines["fpga"]
    r = runner.invoke(app, ["accel", "probe", "fpga"])
    assert r.exit_code == 0 and r.output.count("not found") == 3, r.output
    r = runner.invoke(app, ["accel", "probe", "dre-emu"])
    assert "clock_hz" in r.output and "8e+08" in r.output
    r = runner.invoke(app, ["accel", "probe", "nope"])
    assert r.exit_code == 1 and "unknown retrieval backend 'nope'" in r.output
    with DreCardModel(tmp_path) as c:
        r = runner.invoke(app, ["accel", "probe", "fpga", "--prefix", c.prefix])
        assert "DRE 1.0, 64 MiB card memory, 800 MHz" in r.output, r.output
        monkeypatch.setenv(PREFIX_ENV, c.prefix)
        r = runner.invoke(app, ["accel", "list"])
        assert "fpga       available" in r.output, r.output
    assert not os.path.exists(c.prefix + "_user")  # the model cleans up its nodes
