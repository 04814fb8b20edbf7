#!/usr/bin/env python3
"""Drives an IDunno coordinator with Triton's own Python client (tritonclient[http], from
PyPI), as a user with an existing KServe v2 / Triton client would: health, metadata, then
one photo as an encoded image (BYTES, binary extension, classification) and as a
preprocessed FP32 tensor (binary extension, logits and classification).

Usage: v2_client_check.py HOST:PORT MODEL PHOTO
Prints one line of JSON with what the client decoded; exits non-zero on any failure.
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(path, size):
    """torchvision's ImageNet preprocessing: resize the short side to size*256/224
    (bilinear), centre-crop size, scale to [0, 1], normalise."""
    img = Image.open(path).convert("RGB")
    short = round(size * 256 / 224)
    w, h = img.size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return x.transpose(2, 0, 1)[None, ...].astype(np.float32)


def label(entry):
    text = entry.decode() if isinstance(entry, bytes) else str(entry)
    return text.split(":", 2)[2]


def main():
    url, model, photo = sys.argv[1], sys.argv[2], sys.argv[3]
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready(model), "model not ready"
    meta = client.get_model_metadata(model)
    inputs = {i["name"]: i for i in meta["inputs"]}
    size = int(inputs["input"]["shape"][2])

    with open(photo, "rb") as f:
        encoded = f.read()
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([encoded], dtype=np.object_), binary_data=True)
    top3 = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    result = client.infer(model, [image], outputs=[top3], request_id="stock-1")
    classes = result.as_numpy("probabilities")
    assert classes.shape == (1, 3), classes.shape
    assert result.get_response()["id"] == "stock-1"

    tensor = httpclient.InferInput("input", [1, 3, size, size], "FP32")
    tensor.set_data_from_numpy(preprocess(photo, size), binary_data=True)
    # No outputs named: every output comes back, in binary.
    plain = client.infer(model, [tensor])
    logits = plain.as_numpy("logits")
    probs = plain.as_numpy("probabilities")
    assert abs(float(probs.sum()) - 1.0) < 1e-3, probs.sum()
    top1 = httpclient.InferRequestedOutput("logits", binary_data=False, class_count=1)
    ranked = client.infer(model, [tensor], outputs=[top1]).as_numpy("logits")

    print(json.dumps({
        "bytes_top3": [label(c) for c in classes[0]],
        "tensor_top1": label(ranked[0][0]),
        "logits_shape": list(logits.shape),
        "argmax_agrees": int(np.argmax(logits[0])) == int(label_index(ranked[0][0])),
    }))


def label_index(entry):
    text = entry.decode() if isinstance(entry, bytes) else str(entry)
    return int(text.split(":", 2)[1])


if __name__ == "__main__":
    main()
