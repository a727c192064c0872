# Config validation, wildcard constraints, target and input functions, resources.
import math
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

wildcard_constraints:
    width=r"[0-9]+[km]?",
    layer=r"[0-9]+",
    a=r"[0-9]+",
    b=r"[0-9]+",
    variant=r"[A-Za-z0-9_]+",
    dataset=r"[A-Za-z0-9_]+",
    split=r"train|eval",


LAYERS = sorted(config["layers"])
PAIRS = list(zip(LAYERS[:-1], LAYERS[1:]))
WIDTHS = list(config["widths"])
VARIANTS = list(config["variants"])
SOURCE = config["source"]["kind"]
PERSIST = config["persistence"]
LM = config.get("lm", {})
LM_DATASETS = list(LM.get("datasets", {}))
if SOURCE == "trained" and not LM:
    raise ValueError("config: source.kind 'trained' needs an 'lm' section (model, datasets)")


def width_features(width):
    """Gemma Scope width label -> feature count: 16k -> 16384, 65k -> 65536, 1m -> 2**20."""
    scale = {"k": 1_000, "m": 1_000_000}.get(width[-1], 1)
    count = int(width.rstrip("km")) * scale
    return count if scale == 1 else 2 ** round(math.log2(count))


def sae_folder(width, layer):
    folder = config["widths"][width]["folder"]
    if isinstance(folder, str):
        return folder
    by_layer = {int(k): v for k, v in folder.items()}
    if int(layer) not in by_layer:
        raise ValueError(f"config widths.{width}.folder names no folder for layer {layer}")
    return by_layer[int(layer)]


def sae_source(layer, width):
    """The SAE parameter file (or fetch manifest) of one layer and width."""
    folder = sae_folder(width, layer)
    if SOURCE == "synthetic":
        return f"results/synthetic/layer_{layer}/width_{width}/{folder}/params.npz"
    if SOURCE == "hub":
        return f"results/fetched/width_{width}/layer_{layer}.json"
    if SOURCE == "trained":
        return f"results/trained/layer_{layer}/width_{width}/{folder}/params.npz"
    from saematch.sources import local_sae_path

    return str(local_sae_path(config["source"]["local"]["root"], layer, width, folder))


def solver_of(n_features):
    """`auto` uses scipy's dense LAP up to `assign.dense_max_features`, the certificate above."""
    choice = config["assign"]["solver"]
    if choice != "auto":
        return choice
    return "dense" if n_features <= config["assign"]["dense_max_features"] else "certified"


def variant(name):
    return config["variants"][name]


def vectors_input(wc, layer):
    """Folded variants read the folded SAE; unfolded ones read the source itself."""
    if variant(wc.variant)["folded"]:
        return f"results/folded/width_{wc.width}/layer_{layer}.npz"
    return sae_source(layer, wc.width)


def assign_input(wc):
    """Identity needs only the SAEs; dense LAP the cost matrix; certified the candidate graph and
    the SAEs (its certificate streams over every pair)."""
    saes = {"sae_a": vectors_input(wc, wc.a), "sae_b": vectors_input(wc, wc.b)}
    if variant(wc.variant)["method"] == "identity":
        return saes
    pair = f"{wc.variant}/width_{wc.width}/{wc.a}-{wc.b}.h5"
    if solver_of(width_features(wc.width)) == "dense":
        return {"cost": f"results/costs/{pair}"}
    return {"candidates": f"results/candidates/{pair}", **saes}


def truth_input(wc):
    """Planted families know the true parents of layer b's features; others have no truth."""
    if SOURCE != "synthetic":
        return {}
    return {"truth": f"results/synthetic/layer_{wc.b}/width_{wc.width}/"
            f"{sae_folder(wc.width, wc.b)}/truth.npz"}


def direct_pairs():
    """Non-adjacent (a, b) pairs matched directly, to compare with composed permutations."""
    return [(LAYERS[i], LAYERS[i + d]) for d in range(2, PERSIST["max_distance"] + 1)
            for i in range(len(LAYERS) - d)]


def metrics_files(width, variant_name):
    return [f"results/metrics/{variant_name}/width_{width}/{a}-{b}.h5" for a, b in PAIRS]


def summary_keys():
    return [{"width": w, "variant": v, "layer_a": a, "layer_b": b}
            for w in WIDTHS for v in VARIANTS for a, b in PAIRS]


def consecutive_assignments(width):
    """Assignment files of every variant for the consecutive pairs, variant-major."""
    return [f"results/assign/{v}/width_{width}/{a}-{b}.h5" for v in VARIANTS for a, b in PAIRS]


def trained_card(layer, width):
    """The card `train_sae` writes beside the SAE."""
    return str(Path(sae_source(layer, width)).with_name("card.json"))


def quality_keys():
    return [{"width": w, "layer": layer} for w in WIDTHS for layer in LAYERS]


def figure_files(width):
    names = ["matched_mse", "mse_distributions", "persistence", "thresholds"]
    return {n: f"results/figures/width_{width}/{n}.png" for n in names}


def all_targets():
    targets = ["results/metrics/summary.tsv"]
    for w in WIDTHS:
        targets.append(f"results/persistence/width_{w}/table.tsv")
        targets.extend(figure_files(w).values())
        if SOURCE == "trained":
            targets += [f"results/lm/substitution/width_{w}.tsv",
                        f"results/lm/matching_score/width_{w}.tsv"]
    if SOURCE == "trained":
        targets.append("results/lm/sae_quality.tsv")
    return targets + explore_targets()  # rules/explore.smk


# Resources grow with the width (a 65k pair asks for 16x the memory of a 16k pair) and with
# the attempt, so a job that was killed for memory is resubmitted with more (--retries).
def _streamed_bytes(n):
    """Both layers' feature vectors (Gemma Scope: D = 2 * 2304 + 1), the GEMM blocks in flight
    and, for the certified solver, the candidate graph."""
    block = 3 * min(config["costs"]["block"], n) * n * 8
    candidates = n * 64 * config["assign"]["k"] if solver_of(n) == "certified" else 0
    return 2 * n * 4609 * 4 + block + candidates


def mem_mb_costs(wc, attempt):
    return attempt * (2048 + _streamed_bytes(width_features(wc.width)) // 2**20)


def mem_mb_assign(wc, attempt):
    """Dense: the float32 matrix, scipy's float64 copy and its work arrays (~20 bytes a pair)."""
    n = width_features(wc.width)
    need = n * n * 20 if solver_of(n) == "dense" else _streamed_bytes(n)
    return attempt * (2048 + need // 2**20)


def mem_mb_sae(wc, attempt):
    return attempt * (2048 + width_features(wc.width) * 2304 * 4 * 6 // 2**20)


def runtime_min(wc, attempt):
    """Minutes: a 16k pair takes a few minutes on a CPU node; dense cost grows with n^2."""
    return attempt * (20 + 10 * (width_features(wc.width) // 16384) ** 2)
