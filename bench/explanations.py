"""Which map is right? Every explanation method scored against object masks known exactly, on the shipped model.

    python bench/explanations.py                    # N = 500: bench/results/explanations.json, docs/figures/explanations*.png
    python bench/explanations.py --images 4 --pairs 4 --grad-images 4 --subset 2 --out /tmp/e --figures /tmp/e

The scenes (``training/synthetic_shapes.py``, seed ``training.evaluate.TEST_SEED`` = 2024, never used in
training: training batches use seeds >= 1,000,000 and its monitor seed 99):

* ``make_shapes(images, 2024)``: one object per image, the model card's evaluation scenes. Segmentation scores
  against the patch mask (a patch is on the object when >= 50% of its pixels are, ``faithfulness.PATCH_COVER``),
  and the mass ratio against the patches that touch the object (``training.evaluate.patches_on_object``, the
  model card's rollout measure);
* ``make_two_shapes(pairs, 2024)``: two objects of different classes, at least a patch apart, for class
  sensitivity (each object's patches: those it touches).

What each method costs decides on how many images it runs, all of them the first images of the same scenes:
the attention maps, the baselines and the oracle on every image; the gradient maps (one backward pass per
class explained) on the first ``--grad-images``; attention flow (196 max-flow problems per image, SciPy's
Dinic) and integrated gradients (``IG_STEPS`` forward + backward passes) on the first ``--subset``. The
perturbation test (Chefer et al. 2021, Sec. 4.2) runs every method on the first ``--subset`` single-object
images, both orders, at 10%..90% removed: methods x 2 x 9 forward passes per image. The JSON and the table
give each score's N. Intervals: 95% percentile bootstrap over images (2,000 resamples).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy_vit as nv  # noqa: E402
from numpy_vit import analysis, faithfulness as F  # noqa: E402
from training.evaluate import TEST_SEED, patches_on_object  # noqa: E402
from training.synthetic_shapes import make_shapes, make_two_shapes  # noqa: E402

ATTENTION_METHODS = ("attention", "rollout", "rollout_max", "rollout_min", "rollout_late")
GRADIENT_METHODS = ("chefer", "grad_rollout", "grad_cam", "input_x_grad")
SUBSET_METHODS = ("flow", "integrated_gradients")
BASELINES = ("random", "centre", "oracle")
ORDER = ATTENTION_METHODS + ("flow",) + GRADIENT_METHODS + ("integrated_gradients",) + BASELINES
FLOW_SCALE = 10 ** 7          # SciPy's max flow takes integer capacities: A_hat * 1e7, rounded (error <= 2e-5)


def scipy_max_flow(capacity, source, sinks):
    """Max flow from ``source`` to each sink by SciPy's Dinic on integer capacities (capacity * FLOW_SCALE).

    Rounding moves each edge by at most 0.5 / FLOW_SCALE, so a flow value by at most (edges in the minimum cut)
    x 0.5e-7: under 1e-5 for 197 tokens."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    graph = csr_matrix(np.round(capacity * FLOW_SCALE).astype(np.int32))
    return [maximum_flow(graph, source, sink, method="dinic").flow_value / FLOW_SCALE for sink in sinks]


class Progress:
    """One line on stderr per stage, rewritten in place: 'stage  done/total  seconds'."""

    def __init__(self, stage, total):
        self.stage, self.total, self.start = stage, total, time.time()
        self.update(0)

    def update(self, done):
        sys.stderr.write(f"\r{self.stage:<34} {done:>5}/{self.total:<5} {time.time() - self.start:7.1f} s")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\n")
        return round(time.time() - self.start, 1)


def spans(count, batch, cuts):
    """(lo, hi) batches over ``count`` images that never straddle a cut, so every image of a batch gets the
    same methods."""
    edges = sorted({0, count, *[c for c in cuts if 0 < c < count]})
    for lo, hi in zip(edges[:-1], edges[1:]):
        for start in range(lo, hi, batch):
            yield start, min(start + batch, hi)


def limits(args, have_gradients):
    """How many of the first images each method runs on."""
    limit = {name: args.images for name in ATTENTION_METHODS + BASELINES}
    for name in GRADIENT_METHODS:
        limit[name] = min(args.grad_images, args.images) if have_gradients else 0
    limit["flow"] = min(args.subset, args.images)
    limit["integrated_gradients"] = min(args.subset, args.images) if have_gradients else 0
    return limit


def record_for(hi, limit):
    """What the forward pass keeps: everything backward reads when a gradient method runs on the batch."""
    names = ["blocks.*.attn.pattern", "logits", "input"]
    if any(hi <= limit[m] for m in GRADIENT_METHODS + ("integrated_gradients",)):
        names += nv.BACKWARD_RECORD
    return names


def single_object_maps(model, data, limit, args, rng):
    """Every method's maps on the single-object scenes: {name: [n_name, gh, gw]}, the predictions and inputs."""
    images, labels = data["images"], data["labels"]
    grid = model.config.grid_size
    coverage = F.patch_coverage(data["masks"], grid)                    # [N, gh, gw]
    maps = {name: [] for name in ORDER if limit[name] > 0}
    predicted, inputs = [], []
    progress = Progress("single-object scenes: maps", len(images))
    for lo, hi in spans(len(images), args.batch, limit.values()):
        trace = model.run(list(images[lo:hi]), record=record_for(hi, limit))
        predicted.append(trace.logits.argmax(axis=1))
        if hi <= args.subset:
            inputs.append(trace["input"])
        target = labels[lo:hi]
        grads = model.backward(trace, target.tolist()) if any(hi <= limit[m] for m in GRADIENT_METHODS) else None
        context = dict(rng=rng, coverage=coverage[lo:hi], model=model, target=target, max_flow=scipy_max_flow,
                       steps=args.ig_steps)
        for name in maps:
            if hi <= limit[name]:
                maps[name].append(F.explain(name, trace, grads, **context))
        progress.update(hi)
    seconds = progress.close()
    maps = {name: np.concatenate(parts) for name, parts in maps.items()}
    return maps, np.concatenate(predicted), (np.concatenate(inputs) if inputs else None), seconds


def two_object_shares(model, data, limit, args, rng):
    """Class sensitivity per method on the two-object scenes: {name: [n_name]} (each image: the mean over its two
    objects of the map's share on its own object)."""
    images, labels = data["images"], data["labels"]                      # [n, S, S, 3], [n, 2]
    grid = model.config.grid_size
    touched = [patches_on_object(data["masks"][:, k], grid).reshape(-1, *grid) for k in (0, 1)]   # 2 x [n, gh, gw]
    coverage = [F.patch_coverage(data["masks"][:, k], grid) for k in (0, 1)]
    pair_limit = {name: min(limit[name], len(images)) for name in limit}
    pair_limit["integrated_gradients"] = min(pair_limit["integrated_gradients"], args.ig_pairs)
    shares = {name: [] for name in ORDER if pair_limit[name] > 0}
    progress = Progress("two-object scenes: class shares", len(images))
    for lo, hi in spans(len(images), args.batch, pair_limit.values()):
        trace = model.run(list(images[lo:hi]), record=record_for(hi, pair_limit))
        need_grads = any(hi <= pair_limit[m] for m in GRADIENT_METHODS)
        per_object = {name: [] for name in shares}
        agnostic = {}                                                    # class-agnostic maps: one per image
        for k in (0, 1):
            target = labels[lo:hi, k]
            grads = model.backward(trace, target.tolist()) if need_grads else None
            context = dict(rng=rng, coverage=coverage[k][lo:hi], model=model, target=target,
                           max_flow=scipy_max_flow, steps=args.ig_steps)
            for name in shares:
                if hi > pair_limit[name]:
                    continue
                if not F.METHODS[name].class_specific and name != "random" and name in agnostic:
                    values = agnostic[name]
                else:
                    values = agnostic[name] = F.explain(name, trace, grads, **context)
                own, other = touched[k][lo:hi], touched[1 - k][lo:hi]
                per_object[name].append(F.class_share(values, own, other))
        for name, pair in per_object.items():
            if pair:
                shares[name].append(np.mean(pair, axis=0))               # [b]: the mean over the two objects
        progress.update(hi)
    seconds = progress.close()
    return {name: np.concatenate(parts) for name, parts in shares.items() if parts}, seconds


def predictor(model, batch):
    """images [B, C, H, W] -> top-1 classes [B], by batched forward passes that keep only the logits."""
    def predict(x):
        return np.concatenate([model.forward(x[i:i + batch], record=["logits"]).logits.argmax(axis=1)
                               for i in range(0, len(x), batch)])
    return predict


def perturbation(model, inputs, labels, maps, args, seed):
    """{name: {"positive": [S, K] bool, "negative": [S, K] bool}} on the first ``subset`` images."""
    count = len(inputs)
    names = [name for name in ORDER if name in maps and len(maps[name]) >= count]
    predict = predictor(model, args.batch)
    levels = F.LEVELS
    result = {}
    progress = Progress("perturbation: forward passes", len(names) * 2 * count * len(levels))
    done = 0
    for index, name in enumerate(names):
        result[name] = {}
        for order in ("positive", "negative"):
            stacked = []                                                  # all levels of all images, one batch
            ranking = F.removal_order(maps[name][:count], order == "positive", np.random.default_rng([seed, index]))
            for level in levels:
                stacked.append(F.remove_patches(inputs, ranking, int(round(level * ranking.shape[1])),
                                                model.config.patch_size))
            predicted = predict(np.concatenate(stacked)).reshape(len(levels), count)   # [K, S]
            result[name][order] = (predicted == labels[:count][None]).T                # [S, K]
            done += count * len(levels)
            progress.update(done)
    return result, progress.close()


def summarise(maps, truth_50, touched, shares, curves):
    """The JSON's "methods": every method x score as mean and 95% interval over images, with N."""
    methods = {}
    for name in ORDER:
        if name not in maps and name not in shares:
            continue
        entry = dict(label=F.METHODS[name].label, family=F.METHODS[name].family)
        if name in maps:
            m = maps[name]
            n = len(m)
            entry["segmentation_images"] = n
            entry["average_precision"] = F.mean_interval(F.average_precision(m, truth_50[:n]))
            entry["best_iou"] = F.mean_interval(F.best_iou(m, truth_50[:n]))
            entry["pointing_game"] = F.mean_interval(F.pointing_game(m, truth_50[:n]))
            entry["mass_ratio"] = F.mean_interval(F.object_mass_ratio(m, touched[:n]))
        if name in shares:
            entry["class_sensitivity"] = F.mean_interval(shares[name])
        if name in curves:
            entry["perturbation"] = {}
            for order, correct in curves[name].items():
                entry["perturbation"][order] = dict(
                    images=int(len(correct)), accuracy=[round(float(a), 4) for a in correct.mean(axis=0)],
                    auc=F.mean_interval(F.curve_auc(correct.astype(float))))
        methods[name] = entry
    return methods


def chance(truth_50, touched):
    """What a map that knows nothing scores, from theory, on these images."""
    positives = truth_50.reshape(len(truth_50), -1).sum(axis=1)
    patches = truth_50[0].size
    return dict(average_precision=float(F.random_ap_expectation(positives, patches).mean()),
                pointing_game=float((positives / patches).mean()), mass_ratio=1.0, class_sensitivity=0.5)


def cell(score, digits=2):
    if not score or not score.get("n"):
        return "-"
    return f"{score['mean']:.{digits}f} [{score['low']:.{digits}f}, {score['high']:.{digits}f}]"


def table(result) -> str:
    """The Markdown table: one row per method, each score's mean [95% interval]; N per column group."""
    rows = ["| method | AP | best IoU | pointing | mass ratio | class sensitivity | AUC positive (lower = better) "
            "| AUC negative (higher = better) | N seg / pairs / perturb |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, m in result["methods"].items():
        pert = m.get("perturbation", {})
        counts = (f"{m.get('segmentation_images', 0)} / {m.get('class_sensitivity', {}).get('n', 0)} / "
                  f"{pert.get('positive', {}).get('images', 0)}")
        rows.append(f"| {m['label']} | {cell(m.get('average_precision'))} | {cell(m.get('best_iou'))} | "
                    f"{cell(m.get('pointing_game'))} | {cell(m.get('mass_ratio'))} | "
                    f"{cell(m.get('class_sensitivity'))} | {cell(pert.get('positive', {}).get('auc'))} | "
                    f"{cell(pert.get('negative', {}).get('auc'))} | {counts} |")
    c = result["chance"]
    rows.append(f"| *chance (theory)* | {c['average_precision']:.2f} | | {c['pointing_game']:.2f} | 1.00 | 0.50 "
                f"| | | |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an .npz (default: the shipped weights/default.npz)")
    parser.add_argument("--images", type=int, default=500, help="single-object scenes (attention maps, baselines)")
    parser.add_argument("--pairs", type=int, default=None, help="two-object scenes (default: --images)")
    parser.add_argument("--grad-images", type=int, default=32, help="the first images that get gradient maps")
    parser.add_argument("--subset", type=int, default=12,
                        help="the first images that get flow, integrated gradients and the perturbation test")
    parser.add_argument("--ig-pairs", type=int, default=0, help="two-object scenes for integrated gradients")
    parser.add_argument("--ig-steps", type=int, default=F.IG_STEPS)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--seed", type=int, default=TEST_SEED)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--plot-only", type=Path, default=None, metavar="JSON",
                        help="draw the figures again from a results file, running nothing else")
    args = parser.parse_args(argv)
    args.pairs = args.images if args.pairs is None else args.pairs
    for flag in ("images", "pairs", "subset", "batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    args.subset = min(args.subset, args.images)
    model = nv.ViT.from_pretrained(args.model)
    if args.plot_only:
        draw(json.loads(args.plot_only.read_text()), model, args.figures)
        return
    start, cpu_start = time.time(), time.process_time()
    model.speedups = True                                                # the threaded forward pass
    have_gradients = hasattr(model, "backward") and hasattr(analysis, "explanation_map")
    limit = limits(args, have_gradients)
    rng = np.random.default_rng([args.seed, 28])
    grid = model.config.grid_size

    data = make_shapes(args.images, args.seed, img_size=model.config.img_size[0])
    truth_50 = F.patch_mask(data["masks"], grid)                         # [N, gh, gw] >= 50% covered
    touched = patches_on_object(data["masks"], grid).reshape(-1, *grid)  # [N, gh, gw] any pixel
    maps, predicted, inputs, t_maps = single_object_maps(model, data, limit, args, rng)
    pairs = make_two_shapes(args.pairs, args.seed, img_size=model.config.img_size[0])
    shares, t_pairs = two_object_shares(model, pairs, limit, args, rng)
    curves, t_perturb = perturbation(model, inputs, data["labels"], maps, args, args.seed)

    result = dict(
        model=model.config.name, seed=args.seed, images=args.images, pairs=args.pairs,
        grad_images=limit["chefer"], subset=args.subset, ig_steps=args.ig_steps, ig_pairs=args.ig_pairs,
        levels=list(F.LEVELS), accuracy=float((predicted == data["labels"]).mean()),
        patch_mask=f"segmentation: a patch is on the object when >= {F.PATCH_COVER:.0%} of its pixels are; mass "
                   f"ratio and class sensitivity: every patch the object touches",
        perturbation=f"the first {args.subset} single-object images; patches removed in the map's order (ties at "
                     f"random) and painted in the image's mean colour; top-1 accuracy against the label",
        interval="95% percentile bootstrap over images, 2000 resamples",
        gradients="present" if have_gradients else "missing: model.backward or analysis.explanation_map not found",
        chance=chance(truth_50, touched),
        methods=summarise(maps, truth_50, touched, shares, curves),
        seconds=dict(maps=t_maps, pairs=t_pairs, perturbation=t_perturb, total=round(time.time() - start, 1),
                     cpu=round(time.process_time() - cpu_start, 1)),
    )
    result["disagreement"] = pick_disagreement(maps, truth_50, best_method(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanations.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\n{result['model']}: accuracy {result['accuracy']:.3f} on {args.images} images; "
          f"{result['seconds']['total']} s in all ({result['seconds']['cpu']} s of CPU time)")
    draw(result, model, args.figures)
    print(f"wrote {args.out / 'explanations.json'} and {args.figures}/explanations*.png")


def draw(result, model, folder):
    """The two figures from the JSON's numbers; the disagreement scene's maps are computed again (one image)."""
    from numpy_vit.viz import faithfulness as figures

    folder.mkdir(parents=True, exist_ok=True)
    figures.scores_figure(result, folder / "explanations.png")
    pick = result["disagreement"]
    index, shown = pick["image"], pick["methods"]
    data = make_shapes(index + 1, result["seed"], img_size=model.config.img_size[0])
    label = data["labels"][index:]
    trace = model.run([data["images"][index]])                            # one image: keep everything
    grads = model.backward(trace, label.tolist()) if any(F.METHODS[n].needs == "grads" for n in shown) else None
    coverage = F.patch_coverage(data["masks"][index:], model.config.grid_size)
    maps = {n: F.explain(n, trace, grads, rng=np.random.default_rng(0), coverage=coverage, model=model,
                         target=label, max_flow=scipy_max_flow)[0] for n in shown}
    figures.disagreement_figure(data["images"][index], F.patch_mask(data["masks"][index:], model.config.grid_size)[0],
                                maps, {n: F.METHODS[n].label for n in shown},
                                f"make_shapes seed {result['seed']}, image {index}\n"
                                f"a {data['classes'][label[0]]} (the class explained)",
                                scores={n: f"AP {pick['average_precision'][n]:.2f}" for n in shown},
                                save_path=folder / "explanations_disagree.png")


def pick_disagreement(maps, truth_50, best):
    """The scene for the small figure: raw attention, the rollout, the method with the best AP and Chefer's
    relevance, on the image (among those all four have maps for) where the best method's AP beats the rollout's
    by the most."""
    shown = list(dict.fromkeys(n for n in ("attention", "rollout", best, "chefer") if n in maps))
    count = min(len(maps[n]) for n in shown)
    ap = {n: F.average_precision(maps[n][:count], truth_50[:count]) for n in shown}
    index = int(np.nanargmax(ap[best] - ap["rollout"]))
    return dict(image=index, methods=shown, average_precision={n: round(float(ap[n][index]), 3) for n in shown})


def best_method(result) -> str:
    """The explanation (not a baseline or the oracle) with the highest mean AP."""
    scored = {n: m["average_precision"]["mean"] for n, m in result["methods"].items()
              if m["family"] in ("attention", "gradient") and "average_precision" in m}
    return max(scored, key=scored.get)


if __name__ == "__main__":
    main()
