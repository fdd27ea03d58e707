"""Calibration set for `llama-adapter quantize --calibration` (activation-aware 4-bit).

Training-distribution pictures (the PIL renderer, random canvas sizes) and instructions, from
a seed of its own (5151) that neither training (1, 3, 99, 12345, 424242) nor the held-out
evaluation (2024, 4048, 8096, 31) uses, so the quantiser never sees the questions it is
scored on. Answers are not stored: the quantiser runs the model and appends its own.

    python3 tools/train/calibration.py   # writes www/models/default/calibration/
Needs numpy and Pillow only.
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import data as D  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "www", "models", "default", "calibration")
N_PICTURES = 24
N_TEXT = 16


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(5151)
    images = []
    for i in range(N_PICTURES):
        scene = D.sample_scene(rng)
        img = D.render_pil(scene, rng, size=rng.randint(128, 400), noise=0)
        name = f"calib_{i:03d}.png"
        img.save(os.path.join(OUT, name), optimize=True)
        images.append({"image": name, "questions": [{"kind": k, "instruction": q} for k, q, _ in D.questions(scene, rng, all_kinds=True)]})
    text = [{"kind": k, "instruction": q} for k, q, _ in (D.text_task(rng) for _ in range(N_TEXT))]
    doc = {"description": "Calibration set for llama-adapter quantize (tools/train/calibration.py, seed 5151): "
                          "training-distribution pictures and instructions, disjoint from eval/.",
           "images": images, "text": text}
    with open(os.path.join(OUT, "calibration.json"), "w") as f:
        json.dump(doc, f, indent=0)
    print(f"wrote {N_PICTURES} pictures and {sum(len(i['questions']) for i in images) + len(text)} instructions to {OUT}")


if __name__ == "__main__":
    main()
