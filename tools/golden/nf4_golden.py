#!/usr/bin/env python3
"""Golden NF4 (QLoRA) quantization data for FineTune's C# tests.

Re-implements bitsandbytes' reference algorithm (bitsandbytes/backends/default/ops.py quantize_4bit /
quantize_blockwise / dequantize_4bit and functional.py quantize_4bit(compress_statistics=True),
create_dynamic_map(signed=True)) with numpy alone, so it runs where there is no torch:

  * NF4 table: the 16 fp32 values of bitsandbytes' NF4 type.
  * blocks of 64 values, absmax = max|x| (fp32); scaled = clamp(x * (1/absmax), -1, 1) in fp32;
    code = argmin |scaled - NF4| (first index on ties); two codes per byte, first value in the high nibble.
  * double quantization: offset = mean(absmax); (absmax - offset) quantized blockwise (256) with the
    signed dynamic map, each 256-block with its own fp32 absmax.
  * dequantization: absmax' = dynamic[codes] * absmax2[block] + offset;  w = NF4[nibble] * absmax'[block]
    (fp32 products, as bitsandbytes' CUDA kernel computes them).

Where torch and bitsandbytes are importable (the GPU machine), it also runs bitsandbytes itself on the
same inputs and reports any difference in packed bytes / absmax codes, and the largest absmax / value
difference, so the re-implementation is checked against the real library.

Output: FineTune.Tests/Adapters/Golden/nf4_golden.json (inputs and expected results, float arrays as
base64 little-endian fp32 so they compare bit for bit) and one .safetensors per case beside it.

Usage:  python3 tools/golden/nf4_golden.py [--out DIR] [--check-bnb]
"""
import argparse
import base64
import json
import os
import struct
import sys

import numpy as np

NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)

BLOCK = 64
NESTED_BLOCK = 256


def linspace_f32(start, end, steps):
    """torch.linspace in fp32 (scalar CPU path): start + step*i below steps//2, end - step*(steps-1-i) above."""
    start, end = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start], dtype=np.float32)
    step = np.float32((end - start) / np.float32(steps - 1))
    half = steps // 2
    out = np.empty(steps, dtype=np.float32)
    for i in range(steps):
        if i < half:
            out[i] = np.float32(start + np.float32(step * np.float32(i)))
        else:
            out[i] = np.float32(end - np.float32(step * np.float32(steps - i - 1)))
    return out


def create_dynamic_map_signed():
    """bitsandbytes.functional.create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8).

    With bitsandbytes (or torch) importable, their values are used: torch's vectorised CPU linspace rounds a
    few points one ulp away from the textbook formula used below when neither is present."""
    try:
        import bitsandbytes.functional as F
        return F.create_dynamic_map(signed=True).numpy().astype(np.float32)
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch
        lin = lambda a, b, n: torch.linspace(a, b, n, dtype=torch.float32).numpy()  # noqa: E731
    except Exception:  # noqa: BLE001
        lin = linspace_f32
    data = []
    max_exponent_bits = 7
    for i in range(max_exponent_bits):
        fraction_items = 2 ** i + 1
        boundaries = lin(0.1, 1.0, fraction_items)
        means = ((boundaries[:-1] + boundaries[1:]) / np.float32(2.0)).astype(np.float32)
        scale = np.float32(10 ** (-(max_exponent_bits - 1) + i))
        data += list((scale * means).astype(np.float32))
        data += list((-(scale * means)).astype(np.float32))
    data.append(np.float32(0))
    data.append(np.float32(1.0))
    assert len(data) == 256
    return np.array(sorted(data), dtype=np.float32)


def block_absmax(flat, block):
    n = flat.size
    full, rem = divmod(n, block)
    parts = []
    if full:
        parts.append(np.abs(flat[: full * block].reshape(full, block)).max(axis=1))
    if rem:
        parts.append(np.array([np.abs(flat[full * block:]).max()], dtype=np.float32))
    return np.concatenate(parts).astype(np.float32)


def scale_blocks(flat, per_block, block):
    n = flat.size
    full, rem = divmod(n, block)
    parts = []
    if full:
        parts.append((flat[: full * block].reshape(full, block) * per_block[:full].reshape(-1, 1)).reshape(-1))
    if rem:
        parts.append(flat[full * block:] * per_block[full])
    return np.concatenate(parts).astype(np.float32)


def nearest(x, code):
    with np.errstate(invalid="ignore"):
        return np.argmin(np.abs(x.reshape(-1, 1) - code.reshape(1, -1)), axis=1)


def quantize_nf4(a, dynamic):
    flat = a.reshape(-1).astype(np.float32)
    absmax = block_absmax(flat, BLOCK)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (np.float32(1.0) / absmax).astype(np.float32)
        scaled = np.clip(scale_blocks(flat, inv, BLOCK), -1, 1).astype(np.float32)
    if scaled.size % 2:
        scaled = np.concatenate([scaled, np.zeros(1, dtype=np.float32)])
    q = nearest(scaled, NF4).astype(np.uint8)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)

    offset = np.float32(absmax.mean(dtype=np.float32))
    centred = (absmax - offset).astype(np.float32)
    absmax2 = block_absmax(centred, NESTED_BLOCK)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv2 = (np.float32(1.0) / absmax2).astype(np.float32)
        scaled2 = np.clip(scale_blocks(centred, inv2, NESTED_BLOCK), -1, 1).astype(np.float32)
    codes2 = nearest(scaled2, dynamic).astype(np.uint8)
    return packed, absmax, codes2, absmax2, offset


def dequantize_nf4(packed, codes2, absmax2, offset, n, dynamic):
    absmax = (scale_blocks(dynamic[codes2.astype(np.int64)], absmax2, NESTED_BLOCK) + offset).astype(np.float32)
    nibbles = np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)[:n]
    values = NF4[nibbles.astype(np.int64)]
    return scale_blocks(values, absmax, BLOCK), absmax


def cases():
    rng = np.random.RandomState(1234)
    out = {}
    out["normal_128x160"] = (rng.randn(128, 160) * 0.02).astype(np.float32)          # 320 blocks: 2 nested blocks
    w = (rng.randn(8, 64) * 0.5).astype(np.float32)
    w[3, :] = 0.0                                                                    # an all-zero block
    w[5, 7] = 3.0                                                                    # an outlier
    out["zero_block_and_outlier_8x64"] = w
    out["remainder_7x37"] = rng.uniform(-2, 2, size=(7, 37)).astype(np.float32)      # 259 values: partial block, odd count
    bf = (rng.randn(32, 96) * 0.05).astype(np.float32)
    bf = (bf.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)               # bf16-representable values
    out["bf16_values_32x96"] = bf
    grid = np.tile(np.concatenate([NF4, -NF4[::-1]]), 4).astype(np.float32).reshape(2, 64)
    out["code_points_2x64"] = grid                                                   # values on the code points
    return out


def b64(arr):
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def save_safetensors(path, tensors, metadata=None):
    dt = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        raw = arr.tobytes()
        header[name] = {"dtype": dt[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def check_with_bitsandbytes(inputs, results):
    try:
        import torch
        import bitsandbytes.functional as F
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes check skipped: {e}")
        return True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ok = True
    dyn = F.create_dynamic_map(signed=True).numpy().astype(np.float32)
    ours = create_dynamic_map_signed()
    ulps = np.abs(dyn.view(np.int32).astype(np.int64) - ours.view(np.int32).astype(np.int64)).max()
    print(f"dynamic map: max difference to bitsandbytes {ulps} ulp")
    for name, a in inputs.items():
        t = torch.from_numpy(a).to(device)
        packed, state = F.quantize_4bit(t, blocksize=BLOCK, compress_statistics=True, quant_type="nf4")
        r = results[name]
        bnb_packed = packed.reshape(-1).cpu().numpy()
        bnb_codes = state.absmax.reshape(-1).cpu().numpy()
        bnb_absmax2 = state.state2.absmax.reshape(-1).float().cpu().numpy()
        bnb_offset = float(state.offset)
        deq = F.dequantize_4bit(packed, state).float().reshape(-1).cpu().numpy()
        n_bytes = int((bnb_packed != r["packed"]).sum())
        n_codes = int((bnb_codes != r["absmax_codes"]).sum())
        d_abs2 = float(np.abs(bnb_absmax2 - r["nested_absmax"]).max())
        d_deq = float(np.abs(deq - r["dequantized"]).max())
        print(f"{name}: packed bytes differing {n_bytes}, absmax codes differing {n_codes}, "
              f"nested absmax max diff {d_abs2:.3g}, offset diff {abs(bnb_offset - float(r['offset'])):.3g}, "
              f"dequantized max diff {d_deq:.3g} ({device})")
        ok &= n_bytes == 0 and n_codes == 0
    return ok


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "..", "FineTune.Tests", "Adapters", "Golden"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--check-bnb", action="store_true", help="also run bitsandbytes (needs torch + bitsandbytes)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    dynamic = create_dynamic_map_signed()
    inputs = cases()
    results, golden = {}, {"source": "tools/golden/nf4_golden.py (numpy re-implementation of bitsandbytes' reference NF4)",
                            "block_size": BLOCK, "nested_block_size": NESTED_BLOCK,
                            "nf4_code": b64(NF4), "dynamic_map": b64(dynamic), "cases": []}
    for name, a in inputs.items():
        packed, absmax, codes2, absmax2, offset = quantize_nf4(a, dynamic)
        deq, absmax_deq = dequantize_nf4(packed, codes2, absmax2, offset, a.size, dynamic)
        results[name] = {"packed": packed, "absmax_codes": codes2, "nested_absmax": absmax2,
                         "offset": offset, "dequantized": deq}
        golden["cases"].append({
            "name": name, "shape": list(a.shape), "input": b64(a),
            "packed": b64(packed), "absmax": b64(absmax), "absmax_codes": b64(codes2),
            "nested_absmax": b64(absmax2), "offset": b64(np.array([offset], dtype=np.float32)),
            "absmax_dequantized": b64(absmax_deq), "dequantized": b64(deq),
        })
        save_safetensors(os.path.join(args.out, f"nf4_{name}.safetensors"),
                         {"input": a, "packed": packed, "absmax": absmax, "absmax_codes": codes2,
                          "nested_absmax": absmax2, "offset": np.array([offset], dtype=np.float32),
                          "dequantized": deq.reshape(a.shape)}, {"format": "pt"})
    with open(os.path.join(args.out, "nf4_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(f"wrote {len(inputs)} cases to {args.out}")
    if args.check_bnb and not check_with_bitsandbytes(inputs, results):
        print("MISMATCH against bitsandbytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
