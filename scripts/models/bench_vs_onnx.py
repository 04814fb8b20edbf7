"""IDunno's forward pass against PyTorch's and ONNX Runtime's, one table per model.

What it is: the measuring half of scripts/bench-vs-onnx.sh (which makes the virtual
environment and builds the binary). For each architecture it
1. writes seeded weights with the Rust generator (`gen_weights`, torchvision's tensor names),
2. loads the same file into torchvision's model (or the Lite0 reference module) and exports
   it to ONNX (opset 17, dynamic batch),
3. times the forward pass alone at every batch size on the same number of threads:
   PyTorch (torch.set_num_threads, inference_mode), ONNX Runtime (intra-op threads, all graph
   optimisations), IDunno (its models' forward pass),
   each the median of at least RUNS runs after a warm-up (IDunno's from the models crate's
   forward benchmark, `cargo bench -p idunno-models --bench forward`, which loads the same
   seed-1 weights; at least 5 runs there, within a 3 s budget), in REPEATS rounds that
   measure the three in turn, and the median over the rounds — a virtual machine's CPU can
   run for seconds in a slow mode (docs/BENCHMARKS.md, seventh pass), which one measurement
   alone would take for the framework's speed —, and IDunno's end-to-end figure (`idunno
   bench worker --standalone-only --rounds REPEATS`, its median: decoding the sample photos
   included),
4. prints the table with the ratios, and last `resnet50 batch 8 vs onnxruntime: <ratio>`.

What it is not: a test. Nothing is asserted; figures go to docs/BENCHMARKS.md by hand.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch

# The TorchScript exporter is the one that takes these modules as they are; its deprecation
# notice is not a result.
warnings.filterwarnings("ignore", category=DeprecationWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import make_fidelity_fixtures as fixtures  # noqa: E402
import st_io  # noqa: E402

SIDES = {"inception_v3": 299}
SETTLE_S = 0.5


def median_images_per_s(batch, runs, forward):
    # A framework's worker threads may spin for a while after its last call (OpenMP's wait
    # policy, ONNX Runtime's spinning threads): a precaution, so the previous measurement's
    # threads are at rest before this one starts.
    time.sleep(SETTLE_S)
    forward()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        forward()
        seconds.append(time.perf_counter() - started)
    return batch / statistics.median(seconds)


def idunno(binary, *args):
    out = subprocess.run([binary, "bench", *args], check=True, capture_output=True, text=True).stdout
    return out


def idunno_forward(arch, batches, threads):
    """images/s by batch size: the models crate's forward benchmark (its median run), in a
    process of its own."""
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "-p", "idunno-models", "--bench", "forward", "--",
         arch, batches, str(threads)],
        check=True, capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "FORWARD_BENCH_JSON": "1"}).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["batch"]: row["images_per_s"] for row in rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "idunno"))
    p.add_argument("--archs", default="resnet18,resnet50,resnet101,inception_v3,efficientnet_lite0")
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds: every figure is the median over this many, the three frameworks "
                        "measured in turn within a round (IDunno's forward pass in a process of "
                        "its own each time; its end-to-end figure over as many rounds)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip `idunno bench worker`")
    a = p.parse_args()
    archs = a.archs.split(",")
    batches = [int(b) for b in a.batch_sizes.split(",")]
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    print(f"{a.threads} thread(s), median of {a.runs} runs; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; images/s, forward pass alone unless said")
    closing = None
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            subprocess.run(
                ["cargo", "run", "--quiet", "--release", "-p", "idunno-models", "--example", "gen_weights",
                 "--", tmp, "--seed", "1", arch],
                check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            weights, _ = st_io.read(os.path.join(tmp, f"{arch}.safetensors"))
            model = fixtures.build(arch)
            fixtures.load_into(model, weights)
            side = SIDES.get(arch, 224)
            onnx_path = os.path.join(tmp, f"{arch}.onnx")
            with torch.inference_mode():
                torch.onnx.export(model, torch.randn(1, 3, side, side), onnx_path, opset_version=17,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = a.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

            # Each framework's figure per batch size: the median over `repeats` rounds, the
            # three frameworks measured in turn within a round (a slow phase of the machine
            # then lands on all three, not on one).
            ours, pts, onnxs = {}, {}, {}
            inputs = {b: torch.randn(b, 3, side, side) for b in batches}
            for _ in range(a.repeats):
                for b, rate in idunno_forward(arch, a.batch_sizes, a.threads).items():
                    ours.setdefault(b, []).append(rate)
                for b in batches:
                    x = inputs[b]
                    xn = x.numpy()
                    with torch.inference_mode():
                        pts.setdefault(b, []).append(median_images_per_s(b, a.runs, lambda: model(x)))
                    onnxs.setdefault(b, []).append(
                        median_images_per_s(b, a.runs, lambda: session.run(None, {"input": xn})))
            end_to_end = {}
            if not a.no_end_to_end:
                for line in idunno(a.binary, "worker", "--standalone-only", "--models", arch,
                                   "--batch-sizes", a.batch_sizes, "--threads", str(a.threads),
                                   "--rounds", str(a.repeats), "--json").splitlines():
                    row = json.loads(line)
                    end_to_end[row["batch"]] = row["standalone"]

            print(f"\n{arch}")
            print("| batch | IDunno | IDunno end to end | PyTorch | ONNX Runtime | IDunno/PyTorch | IDunno/ORT | end to end/ORT |")
            print("|---|---|---|---|---|---|---|---|")
            for b in batches:
                pt = statistics.median(pts[b])
                onnx = statistics.median(onnxs[b])
                mine = statistics.median(ours[b])
                e2e = end_to_end.get(b)
                e2e_text = f"{e2e:.1f}" if e2e else "-"
                e2e_ratio = f"{e2e / onnx:.2f}" if e2e else "-"
                print(f"| {b} | {mine:.1f} | {e2e_text} | {pt:.1f} | {onnx:.1f} | {mine / pt:.2f} | "
                      f"{mine / onnx:.2f} | {e2e_ratio} |", flush=True)
                if arch == "resnet50" and b == 8:
                    closing = mine / onnx
    if closing is not None:
        print(f"\nresnet50 batch 8 vs onnxruntime: {closing:.2f}")


if __name__ == "__main__":
    main()
