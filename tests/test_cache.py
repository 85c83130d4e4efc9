"""The per-user build cache: where it is, one build per key, whole entries only, info and clear."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prunefab import cache, progress


@pytest.fixture
def store(tmp_path):
    with cache.located(tmp_path / "cache"):
        yield tmp_path / "cache"


def test_location_flag_then_variable_then_platform(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache.root() == tmp_path / "xdg" / "prunefab"
    monkeypatch.setenv(cache.ENV, str(tmp_path / "env"))
    assert cache.root() == tmp_path / "env"
    with cache.located(tmp_path / "flag"):
        assert cache.root() == tmp_path / "flag"
    assert cache.root() == tmp_path / "env"


def test_an_entry_is_built_once_then_reused(store, capsys, monkeypatch):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "model").write_text("compiled")

    first = cache.entry("demo", cache.key("design"), build, what="the demo model", expect="about 1 s")
    second = cache.entry("demo", cache.key("design"), build, what="the demo model")
    assert first == second and first.parent == store and len(calls) == 1
    assert calls[0] != first and not calls[0].exists()       # built aside, then renamed
    assert (first / "model").read_text() == "compiled"
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "building the demo model ... (first build, about 1 s)"
    assert err[1].startswith("building the demo model: done in ")
    assert len(err) == 2                     # the process that built it does not call it reused
    monkeypatch.setattr(cache, "_reused", set())                     # as another process
    assert cache.entry("demo", cache.key("design"), build, what="the demo model") == first
    assert capsys.readouterr().err == f"the demo model: reused from the cache ({cache.shown(first)})\n"
    other = cache.entry("demo", cache.key("design", "v2"), build, what="the demo model")
    assert other != first and len(calls) == 2


def test_a_failed_build_leaves_nothing(store, capsys):
    def build(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cache.entry("demo", cache.key("broken"), build, what="the broken model")
    assert [p.name for p in store.iterdir() if not p.name.startswith(".locks")] == []
    assert "building the broken model: failed after" in capsys.readouterr().err


def test_two_processes_building_one_key_build_it_once(store):
    script = textwrap.dedent(f"""
        import os, sys, time
        from prunefab import cache
        def build(folder):
            with open({str(store.parent / "builds")!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            (folder / "model").write_text("whole")
        with cache.located({str(store)!r}):
            path = cache.entry("demo", cache.key("shared"), build, what="the shared model")
        print((path / "model").read_text())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o for o, _ in outs] == ["whole\n", "whole\n"]
    assert len((store.parent / "builds").read_text().splitlines()) == 1
    assert sum("reused from the cache" in e for _, e in outs) == 1


def test_info_and_clear_touch_entries_only(store):
    cache.entry("demo", cache.key("a"), lambda f: (f / "m").write_bytes(b"x" * 1000),
                what="model a")
    (store / "notes.txt").write_text("not ours")
    text = cache.describe()
    assert text.splitlines()[0] == f"cache: {store} (1 entries, 0.0 MB)"
    assert "model a, built in" in text
    removed, freed = cache.clear()
    assert removed == 1 and freed >= 1000
    assert cache.entries() == [] and (store / "notes.txt").read_text() == "not ours"


def test_quiet_silences_stage_lines(store, capsys):
    with progress.quiet():
        cache.entry("demo", cache.key("q"), lambda f: None, what="a quiet model")
        cache.entry("demo", cache.key("q"), lambda f: None, what="a quiet model")
    assert capsys.readouterr().err == ""


def test_cache_command_reports_and_clears(tmp_path, capsys):
    from prunefab.cli import main
    where = tmp_path / "c"
    with cache.located(where):
        cache.entry("demo", cache.key("cli"), lambda f: (f / "m").write_text("x"), what="model")
    assert main(["cache", "--cache-dir", str(where)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cache: {where} (1 entries") and "model" in out
    assert main(["--cache-dir", str(where), "cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith(f"removed 1 entries")
    assert list(where.glob("demo-*")) == []


def test_the_tools_own_caches_go_into_the_cache_and_are_cleared_with_it(store, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")
    monkeypatch.delenv("YOWASP_CACHE_DIR", raising=False)
    with cache.tool_caches():
        assert os.environ["XDG_CACHE_HOME"] == str(store / cache.TOOLS)
        assert os.environ["YOWASP_CACHE_DIR"].startswith(str(store / cache.TOOLS))
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(str(store / cache.TOOLS))
        assert cache.root() == store                  # the cache itself stays where it was
        compiled = Path(os.environ["XDG_CACHE_HOME"]) / "wasmtime" / "module"
        compiled.parent.mkdir(parents=True)
        compiled.write_bytes(b"x" * 100)
    assert os.environ["XDG_CACHE_HOME"] == "/elsewhere" and "YOWASP_CACHE_DIR" not in os.environ
    assert [(e.path.name, e.bytes) for e in cache.entries()] == [(cache.TOOLS, 100)]
    assert "compiled code" in cache.describe()
    assert cache.clear() == (1, 100) and not (store / cache.TOOLS).exists()
