#!/usr/bin/python3
"""Regenerate models/tests/fixtures/<arch>.safetensors: PyTorch reference logits.

What it is: the producer of the fidelity fixtures. For every architecture it
1. runs the Rust example `gen_weights` to write seeded weights and a seeded
   batch-2 input (so both sides use bit-identical numbers),
2. loads those weights into torchvision's model (`resnet18()` … `resnet152()`,
   `inception_v3(aux_logits=False, transform_input=True, init_weights=False)`)
   or the EfficientNet-Lite0 definition in efficientnet_lite0_ref.py, checking
   the tensor layout matches exactly (nothing missing, nothing extra),
3. checks the seeded network is well conditioned (PyTorch float32 vs float64
   logits agree to 1e-5, so a 1e-4 comparison is meaningful) and that the two
   batch rows differ clearly,
4. writes the logits (float32, shape (2, 1000)) plus the seeds and layout /
   input fingerprints (and, for Lite0, a fingerprint of the weights bytes) as
   safetensors metadata.

What it is not: run by the tests. It needs PyTorch: use Debian's
(`apt-get install -y python3-torch python3-torchvision`, run with
/usr/bin/python3). `--diagnostics` also prints how far deliberately wrong
variants (ReLU instead of ReLU6, symmetric padding, no transform_input) land
from the reference, to show the 1e-4 tolerance is discriminating.

Usage: /usr/bin/python3 scripts/models/make_fidelity_fixtures.py [--diagnostics] [ARCH ...]
"""

import argparse
import os
import struct
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import efficientnet_lite0_ref  # noqa: E402
import st_io  # noqa: E402

FIXTURES = os.path.join(ROOT, "worker", "tests", "fixtures")
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "inception_v3", "efficientnet_lite0"]
WEIGHTS_SEED = 20240917
INPUT_SEED = 7
BATCH = 2


def build(arch, transform_input=True):
    m = torchvision.models
    if arch.startswith("resnet"):
        return getattr(m, arch)()
    if arch == "inception_v3":
        return m.inception_v3(weights=None, aux_logits=False, transform_input=transform_input, init_weights=False)
    if arch == "efficientnet_lite0":
        return efficientnet_lite0_ref.EfficientNetLite0()
    raise SystemExit(f"unknown arch {arch}")


def to_torch(entry):
    dtype, shape, raw = entry
    if dtype != "F32":
        raise SystemExit(f"unexpected dtype {dtype}")
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).reshape(shape)


def load_into(model, weights):
    expected = {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v[1] for k, v in weights.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))[:5]
        extra = sorted(set(got) - set(expected))[:5]
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:5]
        raise SystemExit(f"layout mismatch: missing {missing} extra {extra} wrong shapes {wrong}")
    state = {k: to_torch(v) for k, v in weights.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.endswith("num_batches_tracked") for k in result.missing_keys):
        raise SystemExit(f"load_state_dict: {result}")
    model.eval()
    return st_io.layout_fingerprint(expected)


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


def diagnostics(arch, weights, x, ref):
    """Show that plausible implementation mistakes exceed the 1e-4 tolerance."""
    variants = {}
    if arch == "efficientnet_lite0":
        model = build(arch)
        load_into(model, weights)
        saved = F.relu6
        efficientnet_lite0_ref.F.relu6 = F.relu
        with torch.no_grad():
            variants["relu instead of relu6"] = model(x)
        efficientnet_lite0_ref.F.relu6 = saved
        for mod in model.modules():
            if isinstance(mod, efficientnet_lite0_ref.SameConv2d):
                mod.forward = (lambda m: lambda t: F.conv2d(
                    t, m.weight, None, m.stride, m.weight.shape[-1] // 2, 1, m.groups))(mod)
        with torch.no_grad():
            variants["symmetric padding"] = model(x)
        acts = []
        model = build(arch)
        load_into(model, weights)
        hook = lambda _m, _i, out: acts.append(float((out > 6).float().mean()))  # noqa: E731
        for blk in model._blocks:
            blk._bn1.register_forward_hook(hook)
        with torch.no_grad():
            model(x)
        print(f"  fraction of depthwise-BN outputs above 6, per block: {[round(a, 3) for a in acts]}")
    if arch == "inception_v3":
        model = build(arch, transform_input=False)
        load_into(model, weights)
        with torch.no_grad():
            variants["transform_input off"] = model(x)
    if arch.startswith("resnet"):
        model = build(arch)
        load_into(model, weights)
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eps = 1e-3
        with torch.no_grad():
            variants["bn eps 1e-3 instead of 1e-5"] = model(x)
    for name, out in variants.items():
        print(f"  variant '{name}': rel diff {rel_diff(out, ref):.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("archs", nargs="*", default=ARCHS)
    parser.add_argument("--diagnostics", action="store_true")
    parser.add_argument("--keep", help="write the generated weights here instead of a temp dir")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    os.makedirs(FIXTURES, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or tmp
        env = dict(os.environ)
        env.setdefault("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        subprocess.run(
            ["cargo", "run", "-q", "-p", "idunno-worker", "--example", "gen_weights", "--", out,
             "--seed", str(WEIGHTS_SEED), "--input-seed", str(INPUT_SEED), "--batch", str(BATCH), *args.archs],
            cwd=ROOT, env=env, check=True,
        )
        for arch in args.archs:
            weights, _ = st_io.read(os.path.join(out, f"{arch}.safetensors"))
            inputs, _ = st_io.read(os.path.join(out, f"{arch}_input.safetensors"))
            x = to_torch(inputs["input"])
            model = build(arch)
            layout = load_into(model, weights)
            with torch.no_grad():
                logits = model(x).contiguous()
            print(f"{arch}: logits {list(logits.shape)} std {float(logits.std()):.3f} "
                  f"max|.| {float(logits.abs().max()):.3f} top1 {logits.argmax(1).tolist()}")
            if args.diagnostics:
                diagnostics(arch, weights, x, logits)
            # The comparison is only meaningful if the network is well conditioned:
            # PyTorch's own float32 result must agree with float64 far below 1e-4.
            with torch.no_grad():
                ref64 = model.double()(x.double())
            conditioning = float((logits.double() - ref64).abs().max() / ref64.abs().max())
            print(f"  float32 vs float64 rel diff {conditioning:.1e}")
            if conditioning > 1e-5:
                raise SystemExit(f"{arch}: seeded network is ill-conditioned ({conditioning:.1e}); fix the init")
            row_gap = float((logits[0] - logits[1]).abs().max() / logits.abs().max())
            print(f"  max |row0 - row1| / max |logits| = {row_gap:.3f}")
            extra = {}
            if arch == "efficientnet_lite0":
                # Pin the generator's exact bytes (small file; FNV in pure Python is slow).
                with open(os.path.join(out, f"{arch}.safetensors"), "rb") as f:
                    extra["weights_fingerprint"] = f"{st_io.fnv1a64(f.read()):016x}"
            raw = struct.pack(f"<{logits.numel()}f", *logits.flatten().tolist())
            st_io.write(
                os.path.join(FIXTURES, f"{arch}.safetensors"),
                {"logits": ("F32", list(logits.shape), raw)},
                {
                    "arch": arch,
                    "weights_seed": WEIGHTS_SEED,
                    "input_seed": INPUT_SEED,
                    "batch": BATCH,
                    "size": x.shape[-1],
                    "transform_input": "true" if arch == "inception_v3" else "n/a",
                    "layout_fingerprint": f"{layout:016x}",
                    "input_fingerprint": f"{st_io.fnv1a64(inputs['input'][2]):016x}",
                    "reference": f"torch {torch.__version__}, torchvision {torchvision.__version__}",
                    **extra,
                },
            )


if __name__ == "__main__":
    main()
