"""Guests in parallel threads: 8 guests on one model, sampling on, produce exactly what
they produce one by one; loading, unloading and closing models and guests while other
guests run is safe (right results, or a clean error for the unloaded model's guests)."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import pytest
from support.threads import run_together
from support.wasm_support import wat

import realm_ext.api
from realm_ext import Host, abi
from realm_ext.api import RealmError
from realm_ext.engines import GuestError
from realm_ext.model import load_gguf


@pytest.fixture(scope="module")
def tiny(model_path):
    return load_gguf(model_path("Q8_0"))


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> str:
    """Every backend this machine has."""
    try:
        Host(device=request.param).close()
    except (ValueError, ImportError, RuntimeError) as e:
        pytest.skip(f"backend {request.param} is not available here: {e}")
    return request.param


@dataclass(frozen=True)
class Job:
    prompt: str
    params: dict = field(default_factory=dict)
    native: bool = True  # wasmtime: forward imports in C (else Python)
    stream: bool = False  # through the generate() iterator (else generate_to)


JOBS = [
    Job("Once upon a time", {"temperature": 0.8, "top_k": 40, "seed": 1, "max_tokens": 24}),
    Job("The quick brown fox", {"temperature": 1.1, "top_p": 0.9, "seed": 2, "max_tokens": 20}, False),
    Job("In the beginning", {"temperature": 0.7, "min_p": 0.05, "seed": 3, "max_tokens": 28}, True, True),
    Job(
        "hello world", {"temperature": 0.9, "repeat_penalty": 1.2, "repeat_last_n": 8, "seed": 4}, False, True
    ),
    Job("a b c d e f", {"temperature": 1.0, "seed": 5, "n_batch": 2, "max_tokens": 16}),
    Job("The", {"temperature": 0.6, "top_k": 5, "seed": 6, "per_layer": True, "max_tokens": 24}, False),
    # a window of 16 positions that slides: 40 tokens through a 16-position ring
    Job("Tell me about the sea", {"temperature": 0.9, "seed": 7, "n_ctx": 16, "max_tokens": 40}, True, True),
    Job("1 2 3", {"temperature": 0.0, "seed": 8, "max_tokens": 20}),  # greedy
]


def run(guest, job: Job) -> tuple[int, list[str]]:
    """(tokens generated, pieces) of one job on a guest."""
    if job.stream:
        pieces = list(guest.generate(job.prompt, **job.params))
        return guest.last_stats.tokens, pieces
    pieces: list[str] = []
    n = guest.generate_to(job.prompt, pieces.append, params=abi.GenerateParams(**job.params))
    return n, pieces


def test_eight_guests_in_parallel_equal_one_by_one(tiny, engine, device) -> None:
    with Host(device=device) as host:
        host.load(tiny)

        def guest(job: Job):
            return host.guest(models=[tiny], engine=engine, native_imports=job.native)

        alone = []
        for job in JOBS:
            with guest(job) as g:
                alone.append(run(g, job))
        assert all(n > 0 and pieces for n, pieces in alone)
        assert len({tuple(p) for _, p in alone}) == len(JOBS)  # different outputs: a real mix

        guests = [guest(job) for job in JOBS]
        steps0 = host.backend.prepare(tiny).step_stats if device == "cpu" else None
        for round_ in range(2):  # twice: the second time on guests that already ran
            together = run_together(
                [lambda g=g, job=job: run(g, job) for g, job in zip(guests, JOBS, strict=True)]
            )
            for job, want, got in zip(JOBS, alone, together, strict=True):
                assert not isinstance(got, BaseException), (job, got)
                assert got == want, (round_, job)
        if steps0 is not None:  # the guests' forward calls shared steps (csrc/cpu/llama_steps.h)
            steps1 = host.backend.prepare(tiny).step_stats
            assert steps1["jobs"] - steps0["jobs"] > steps1["steps"] - steps0["steps"], (steps0, steps1)
        for g in guests:
            assert g.state.kv == {}  # every realm_generate freed its ring
            g.close()


def test_load_unload_and_close_while_guests_run(tiny, model_path, engine) -> None:
    """Guests on model A generate in threads while the main thread loads model B, runs a
    guest on it, unloads B under that guest's feet, closes guests, and finally closes
    the host under A's guests. Every output is right, or a clean error."""
    path_b = model_path("Q4_0", seed=1)
    job_a = Job("Once upon a time", {"temperature": 0.8, "top_k": 40, "seed": 9, "max_tokens": 12})
    job_b = Job("The sea", {"temperature": 0.9, "seed": 10, "max_tokens": 12}, False)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # switch threads often: more interleavings
    try:
        with Host(device="cpu") as host:
            host.load(tiny)
            with host.guest(models=[tiny], engine=engine) as g:
                want_a = run(g, job_a)
            model_b = host.load(path_b)
            with host.guest(models=[model_b], engine=engine, native_imports=False) as g:
                want_b = run(g, job_b)
            host.unload(model_b)
            assert want_a != want_b

            stop = threading.Event()

            def worker_a(i: int) -> int:
                done = 0
                with host.guest(models=[tiny], engine=engine, native_imports=i % 2 == 0) as g:
                    while not stop.is_set() or done < 2:
                        assert run(g, job_a) == want_a
                        done += 1
                return done

            results: list = [None] * 3

            def start_worker(i: int) -> threading.Thread:
                def body() -> None:
                    try:
                        results[i] = worker_a(i)
                    except BaseException as e:  # noqa: BLE001
                        results[i] = e

                t = threading.Thread(target=body)
                t.start()
                return t

            workers = [start_worker(i) for i in range(3)]
            unloaded_errors = 0
            for cycle in range(4):
                model_b = host.load(path_b)  # a fresh parse each time, a new model id
                gb = host.guest(models=[model_b], engine=engine, native_imports=bool(cycle % 2))
                mid_b = host.model_id(model_b)
                outcome: list = []
                first = threading.Event()

                def guest_b(gb=gb, outcome=outcome, first=first) -> None:
                    try:
                        while True:
                            outcome.append(run(gb, job_b))
                            first.set()
                    except BaseException as e:  # noqa: BLE001 - checked below
                        outcome.append(e)
                    first.set()

                tb = threading.Thread(target=guest_b)
                tb.start()
                assert first.wait(120)
                host.unload(model_b)  # waits for the running call, then revokes
                tb.join(120)
                assert not tb.is_alive()
                *ok, last = outcome
                assert ok and all(r == want_b for r in ok)
                # the API's clean error: the guest has no model any more
                assert isinstance(last, ValueError) and "no model granted" in str(last), last
                unloaded_errors += 1
                assert gb.state.kv == {} and gb.state.models == {}
                # and the ABI's: realm_generate with the old id gets "model unknown"
                prompt, packed = job_b.prompt.encode(), abi.GenerateParams(**job_b.params).pack()
                rc = gb.call(
                    "realm_generate", mid_b, gb._put(prompt), len(prompt), gb._put(packed), len(packed)
                )
                assert rc == abi.ERR_MODEL
                gb.close()
                with pytest.raises(KeyError):
                    host.guest(models=[model_b], engine=engine)
            stop.set()
            for t in workers:
                t.join(300)
            assert all(isinstance(r, int) and r >= 2 for r in results), results
            assert unloaded_errors == 4

            # close the host while A's guests generate: each finishes its call right, then
            # gets a clean error
            closing: list = []
            running = threading.Barrier(3)

            def until_closed() -> list:
                seen: list = []
                g = host.guest(models=[tiny], engine=engine)
                running.wait()
                try:
                    while True:
                        seen.append(run(g, job_a))
                except (GuestError, RealmError) as e:
                    seen.append(e)
                return seen

            ts = []
            for _ in range(2):
                t = threading.Thread(target=lambda: closing.append(until_closed()))
                t.start()
                ts.append(t)
            running.wait()
            host.close()
            for t in ts:
                t.join(120)
                assert not t.is_alive()
            assert len(closing) == 2
            for seen in closing:
                *ok, last = seen
                assert all(r == want_a for r in ok)
                assert isinstance(last, GuestError | RealmError), last
            assert host._guests == [] and host._models == {}
    finally:
        sys.setswitchinterval(interval)


def test_model_lookups_while_models_load_and_unload(model_path) -> None:
    """Regression: Host.model_id iterated the model table unlocked, so a lookup (every
    Guest.generate(model=...), every Host.guest) racing a load or unload raised
    'dictionary changed size during iteration'."""
    path = model_path("Q8_0")
    churn = [load_gguf(path) for _ in range(20)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with Host(device="cpu") as host:
            kept = host.load(load_gguf(path))
            stop, errors, lookups = threading.Event(), [], [0]

            def lookup() -> None:
                while not stop.is_set():
                    try:
                        assert host.model_id(kept) == 1
                        host.model_id(churn[-1])  # loaded or not
                    except KeyError:
                        pass
                    except BaseException as e:  # noqa: BLE001
                        errors.append(e)
                        return
                    lookups[0] += 1

            t = threading.Thread(target=lookup)
            t.start()
            try:
                for _ in range(30):
                    for m in churn:
                        host.load(m)
                    for m in churn:
                        host.unload(m)
            finally:
                stop.set()
                t.join(60)
            assert errors == []
            assert lookups[0] > 100
            with pytest.raises(KeyError):
                host.unload(churn[0])  # not loaded
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("native", [True, False])
def test_unload_while_a_guest_is_being_made(tiny, model_path, engine, native, monkeypatch) -> None:
    """Regression: a model unloaded between Host.guest granting it and the guest being
    registered stayed granted to that guest for good."""
    with Host(device="cpu") as host:
        host.load(tiny)
        other = host.load(load_gguf(model_path("Q4_0", seed=1)))
        mid = host.model_id(other)
        real_open = realm_ext.api.open_instance

        def open_racing_an_unload(*args, **kwargs):
            host.unload(other)  # another thread, as it were, while the instance is made
            return real_open(*args, **kwargs)

        monkeypatch.setattr(realm_ext.api, "open_instance", open_racing_an_unload)
        g = host.guest(models=[tiny, other], engine=engine, wasm=wat("proxy"), native_imports=native)
        monkeypatch.setattr(realm_ext.api, "open_instance", real_open)
        assert mid not in g.state.models
        assert g.call("model_info", mid, 64, 48) == abi.ERR_MODEL
        assert g.call("kv_create", mid, 8) == abi.ERR_MODEL
        assert g.call("embedding", mid, 0, 1, 4096) == abi.ERR_MODEL  # native or Python
        assert g.call("model_info", host.model_id(tiny), 64, 48) == 48  # the other model stays
        g.close()


def test_memory_access_waits_for_a_running_call(tiny, engine) -> None:
    """Regression: Guest.memory/read/write/memory_pages did not take the guest's lock, so
    on wasmtime another thread used the store during a call (while an import ran, through
    that call's caller context, which dies when the import returns). Now they wait for
    the call; from inside the call (a stream callback) they still work."""
    with Host(device="cpu") as host:
        host.load(tiny)
        g = host.guest(models=[tiny], engine=engine, wasm=wat("rogue"))
        inside, release = threading.Event(), threading.Event()
        seen: list = []

        def on_emit(piece: str) -> bool:
            seen.append(g.read(0x80, 5))  # from inside the import: no deadlock
            seen.append(g.memory_pages)
            inside.set()
            assert release.wait(60)
            return True

        t = threading.Thread(target=lambda: seen.append(g.generate_to("x", on_emit)))
        t.start()
        assert inside.wait(60)
        got: list = []
        reader = threading.Thread(target=lambda: got.append((g.memory_pages, g.read(0x80, 5))))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive() and got == []  # waits for the call in progress
        release.set()
        reader.join(60)
        t.join(60)
        assert seen == [b"rogue", 4, 0]
        assert got == [(4, b"rogue")]
        g.close()
        with pytest.raises(GuestError, match="closed"):
            g.read(0, 1)
