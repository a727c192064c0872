# Config validation, derived constants, wildcard constraints, and the functions rules share:
# paths of other rules' outputs, input and target functions, canonical params, resources.
#
# Every result path has one home: the `output:` of the rule that makes it. Everything else
# reaches it through `path_of(rule, key, **wildcards)`, which fills in that rule's own pattern,
# so moving an output is one edit in one rule.
import json
import math
from pathlib import Path

from snakemake.utils import validate

if "costs" in config:
    raise ValueError("config: the 'costs' section is now 'compute' (block, device); it steers "
                     "every GEMM pass: cost matrices, candidate graphs and the certificate")

validate(config, schema="../schemas/config.schema.yaml")


wildcard_constraints:
    width=r"[0-9]+[km]?",
    layer=r"[0-9]+",
    a=r"[0-9]+",
    b=r"[0-9]+",
    variant=r"[A-Za-z0-9_]+",
    narrow=r"[0-9]+[km]?",
    wide=r"[0-9]+[km]?",
    dataset=r"[A-Za-z0-9_]+",
    split=r"train|eval",


LAYERS = sorted(config["layers"])
PAIRS = list(zip(LAYERS[:-1], LAYERS[1:]))
WIDTHS = list(config["widths"])
VARIANTS = list(config["variants"])
SOURCE = config["source"]["kind"]
PERSIST = config["persistence"]
COMPUTE = config["compute"]
LM = config.get("lm", {})
LM_DATASETS = list(LM.get("datasets", {}))
SUBSTITUTION = LM.get("substitution", {})
BOOTSTRAP = LM.get("bootstrap", {})
# Hidden-state substitution replaces the output of the layer right after another.
ADJACENT_PAIRS = [(a, b) for a, b in PAIRS if b == a + 1]
if SOURCE == "trained" and not LM:
    raise ValueError("config: source.kind 'trained' needs an 'lm' section (model, datasets)")
SYNTHETIC = config["source"].get("synthetic", {})


def canonical(value):
    """A param value whose text does not depend on the order of keys in the config file.

    Snakemake reruns a job when the text of its params changes; dicts keep insertion order, so
    the same config written back with sorted keys would otherwise look changed.
    """
    return json.loads(json.dumps(value, sort_keys=True))


def path_of(rule, key, **wildcards):
    """The file of output ``key`` of ``rule`` (its one home) for these wildcard values."""
    return getattr(getattr(rules, rule).output, key).format(**wildcards)


def width_features(width):
    """Gemma Scope width label -> feature count: 16k -> 16384, 65k -> 65536, 1m -> 2**20."""
    scale = {"k": 1_000, "m": 1_000_000}.get(width[-1], 1)
    count = int(width.rstrip("km")) * scale
    return count if scale == 1 else 2 ** round(math.log2(count))


def cross_width_pairs():
    """The configured (narrow, wide) width pairs, checked: both widths configured, the first
    narrower, and the matching variant (persistence.variant) a LAP variant."""
    pairs = [tuple(p) for p in config["cross_width"]]
    for narrow, wide in pairs:
        unknown = [w for w in (narrow, wide) if w not in config["widths"]]
        if unknown:
            raise ValueError(f"config cross_width: width {unknown[0]} is not in widths")
        if width_features(narrow) >= width_features(wide):
            raise ValueError(f"config cross_width: [{narrow}, {wide}] must name the narrower "
                             f"width first")
    if pairs and config["variants"].get(PERSIST["variant"], {}).get("method") != "lap":
        raise ValueError(f"config cross_width matches in the space of persistence.variant "
                         f"({PERSIST['variant']!r}), which must be a configured lap variant")
    return pairs


CROSS = cross_width_pairs()


def sae_folder(width, layer):
    if "folder" not in config["widths"][width]:
        raise ValueError(f"config widths.{width}.folder is needed for source kind {SOURCE!r}")
    folder = config["widths"][width]["folder"]
    if isinstance(folder, str):
        return folder
    by_layer = {int(k): v for k, v in folder.items()}
    if int(layer) not in by_layer:
        raise ValueError(f"config widths.{width}.folder names no folder for layer {layer}")
    return by_layer[int(layer)]


def saelens_sae_id(width, layer):
    """The SAELens SAE id of one layer and width: the template, or the width -> layer -> id map."""
    sae_id = config["source"]["saelens"]["sae_id"]
    if isinstance(sae_id, str):
        return sae_id.format(layer=layer, width=width)
    by_layer = {int(k): v for k, v in sae_id.get(width, {}).items()}
    if int(layer) not in by_layer:
        raise ValueError(f"config source.saelens.sae_id names no SAE for width {width}, "
                         f"layer {layer}")
    return by_layer[int(layer)]


def planted_spec(width):
    """The planted family of one width: the synthetic section without the split options, and for
    a width in ``split_from``, the narrower family's size and the split options (so planting a
    wide width changes nothing in the narrow width's params)."""
    spec = {k: v for k, v in SYNTHETIC.items() if k not in ("split_from", "split")}
    narrow = SYNTHETIC.get("split_from", {}).get(width)
    if narrow:
        spec["split"] = {**SYNTHETIC.get("split", {}), "narrow_features": width_features(narrow)}
    return canonical(spec)


def sae_source(layer, width):
    """The SAE parameter file (or fetch manifest) of one layer and width."""
    if SOURCE == "saelens":
        return path_of("fetch_saelens_sae", "manifest", layer=layer, width=width)
    wc = dict(layer=layer, width=width, folder=sae_folder(width, layer))
    if SOURCE == "synthetic":
        return path_of("plant_sae", "params", **wc)
    if SOURCE == "hub":
        return path_of("fetch_sae", "manifest", **wc)
    if SOURCE == "trained":
        return path_of("train_sae", "params", **wc)
    from saematch.sources import local_sae_path

    return str(local_sae_path(config["source"]["local"]["root"], layer, width, wc["folder"]))


def solver_of(n_features):
    """The LAP method for a pair whose wider side has ``n_features`` (saematch.assign.solver_for:
    `auto` is the dense matrix + LAPJV up to `assign.dense_max_features`, certified above)."""
    from saematch.assign import solver_for

    return solver_for(n_features, n_features, config["assign"]["solver"],
                      config["assign"]["dense_max_features"])


def variant_spec(name):
    """The config entry of matching variant ``name`` (with the schema's defaults filled in)."""
    return canonical(config["variants"][name])


def is_cross(wc):
    """A cross-width job (wildcards narrow, wide) rather than one of a single width."""
    return "narrow" in wc.keys()


def pair_widths(wc):
    """The widths of side a and side b of a per-pair job: (narrow, wide) for cross-width jobs."""
    return (wc.narrow, wc.wide) if is_cross(wc) else (wc.width, wc.width)


def pair_features(wc):
    return tuple(width_features(w) for w in pair_widths(wc))


def side_input(wc, side):
    """The SAE file of side ``a`` or ``b`` of a per-pair job, as its variant reads it: folded
    variants read the folded SAE, unfolded ones the source itself."""
    width, layer = (pair_widths(wc)[0], wc.a) if side == "a" else (pair_widths(wc)[1], wc.b)
    if variant_spec(wc.variant)["folded"]:
        return path_of("fold", "folded", width=width, layer=layer)
    return sae_source(layer, width)


def assign_input(wc):
    """Identity and top-1 need only the SAEs; dense LAP the cost matrix; certified the candidate
    graph and the SAEs (its certificate streams over every pair). Cross-width jobs read the
    cross-width rules' costs and candidates."""
    saes = {"sae_a": side_input(wc, "a"), "sae_b": side_input(wc, "b")}
    if variant_spec(wc.variant)["method"] != "lap":
        return saes
    cross = "cross_" if is_cross(wc) else ""
    if solver_of(max(pair_features(wc))) == "dense":
        return {"cost": path_of(f"{cross}cost_matrix", "cost", **dict(wc.items()))}
    return {"candidates": path_of(f"{cross}candidate_graph", "graph", **dict(wc.items())),
            **saes}


def truth_input(wc):
    """Planted families know the true parents of layer b's features; others have no truth."""
    if SOURCE != "synthetic":
        return {}
    return {"truth": path_of("plant_sae", "truth", layer=wc.b, width=wc.width,
                             folder=sae_folder(wc.width, wc.b))}


def cross_truth_input(wc):
    """Planted truth of a cross-width pair whose wide width was planted by splitting the narrow
    one: the wide layer's parents and, across layers, the narrow family's origins at layer b."""
    if SOURCE != "synthetic" or SYNTHETIC.get("split_from", {}).get(wc.wide) != wc.narrow:
        return {}
    truth = {"truth_wide": path_of("plant_sae", "truth", layer=wc.b, width=wc.wide,
                                   folder=sae_folder(wc.wide, wc.b))}
    if wc.a != wc.b:
        truth["truth_narrow"] = path_of("plant_sae", "truth", layer=wc.b, width=wc.narrow,
                                        folder=sae_folder(wc.narrow, wc.b))
    return truth


def cross_layer_pairs():
    """Layer pairs of cross-width matching: each layer with itself, then each layer with the
    next (narrow at t, wide at t+1)."""
    return [(layer, layer) for layer in LAYERS] + PAIRS


def cross_files(rule, key, narrow, wide):
    """One output of a per-pair cross-width rule for every layer pair of one width pair."""
    return [path_of(rule, key, variant=PERSIST["variant"], narrow=narrow, wide=wide, a=a, b=b)
            for a, b in cross_layer_pairs()]


def direct_pairs():
    """Non-adjacent (a, b) pairs matched directly, to compare with composed permutations."""
    return [(LAYERS[i], LAYERS[i + d]) for d in range(2, PERSIST["direct_max_distance"] + 1)
            for i in range(len(LAYERS) - d)]


def pair_files(rule, key, width, variants, pairs):
    """One output of a per-pair rule for every variant and layer pair of one width."""
    return [path_of(rule, key, variant=v, width=width, a=a, b=b)
            for v in variants for a, b in pairs]


def folded_by_layer(wc):
    """Every layer's folded SAE of one width, as inputs named ``layer_{L}``
    (saematch.workflow.layer_inputs reads them back by name)."""
    return {f"layer_{layer}": path_of("fold", "folded", width=wc.width, layer=layer)
            for layer in LAYERS}


def sources_by_layer(wc):
    """Every layer's SAE parameter file of one width, as inputs named ``layer_{L}``."""
    return {f"layer_{layer}": sae_source(layer, wc.width) for layer in LAYERS}


def activations(split):
    """The activation files of every dataset for one split."""
    return [path_of("lm_activations", "activations", dataset=d, split=split)
            for d in LM_DATASETS]


# The explore stage (rules/explore.smk). The model folder whose unembedding (logit lens) and
# tokenizer the evidence uses: the exported LM for trained SAEs, else the one the user names
# (e.g. gemma-2-2b next to Gemma Scope). Semantic scores need token evidence: held-out text
# (trained) or a logit lens (a model).
EXPLORE = config["explore"]
JUDGE = EXPLORE["judge"]


SEMANTIC = SOURCE == "trained" or EXPLORE["model"] is not None


def explore_model():
    """The model folder of the logit lens and tokenizer, or None."""
    return rules.export_model.output.model if SOURCE == "trained" else EXPLORE["model"]


def evidence_input(wc):
    inputs = {"sae": sae_source(wc.layer, wc.width)}
    if SOURCE == "trained":
        inputs["activations"] = activations("eval")
        inputs["corpora"] = [path_of("lm_corpus", "eval", dataset=d) for d in LM_DATASETS]
    if SEMANTIC:
        inputs["model"] = explore_model()
    if EXPLORE["neuronpedia"]["explanations"]:
        inputs["explanations"] = EXPLORE["neuronpedia"]["explanations"]
    return inputs


def evidence_by_layer(wc):
    """Every layer's evidence of one width, as inputs named ``layer_{L}``."""
    return {f"layer_{layer}": path_of("feature_evidence", "evidence", width=wc.width,
                                      layer=layer) for layer in LAYERS}


def semantic_file(variant, width, a, b):
    """The semantic scores of one variant's matches of one layer pair."""
    return path_of("semantic_pair", f"scores_{variant}", width=width, a=a, b=b)


def semantic_input(wc):
    pair = [(wc.a, wc.b)]
    inputs = {
        "evidence_a": path_of("feature_evidence", "evidence", width=wc.width, layer=wc.a),
        "evidence_b": path_of("feature_evidence", "evidence", width=wc.width, layer=wc.b),
        "assignments": pair_files("assign", "assignment", wc.width, VARIANTS, pair),
        "metrics": pair_files("pair_metrics", "metrics", wc.width, VARIANTS, pair),
    }
    if SOURCE == "trained":  # activation correlation on the held-out text
        inputs.update(sae_a=sae_source(wc.a, wc.width), sae_b=sae_source(wc.b, wc.width),
                      activations=activations("eval"))
    return inputs


def explorer_input(wc):
    v = [PERSIST["variant"]]
    inputs = {
        **evidence_by_layer(wc),
        "assignments": pair_files("assign", "assignment", wc.width, v, PAIRS),
        "metrics": pair_files("pair_metrics", "metrics", wc.width, v, PAIRS),
        "chains": path_of("persistence", "chains", width=wc.width),
    }
    if SEMANTIC:  # every variant's scores (the page's per-pair chart)
        inputs["semantic"] = [semantic_file(v, wc.width, a, b) for v in VARIANTS
                              for a, b in PAIRS]
    if JUDGE["enabled"]:
        inputs["judge_table"] = path_of("judge", "table", width=wc.width)
    return inputs


def explore_targets():
    targets = [path_of("explorer", "explorer", width=w) for w in WIDTHS]
    if SEMANTIC:
        targets += list(rules.semantic_table.output)
    if JUDGE["enabled"]:
        targets += [f.format(width=w) for w in WIDTHS for f in rules.judge.output]
    return targets


def delta_loss_substitutes(width):
    """The substitutes whose delta loss is measured at ``width`` (none: EV only, no model)."""
    widths = SUBSTITUTION.get("delta_loss_widths")
    return SUBSTITUTION["delta_loss_substitutes"] if widths is None or width in widths else []


def delta_loss_input(wc):
    """Delta loss reruns the model's later layers against the clean loss; EV needs neither."""
    if not delta_loss_substitutes(wc.width):
        return {}
    return {"model": rules.export_model.output.model,
            "clean": [path_of("clean_loss", "clean", dataset=d) for d in LM_DATASETS]}


def all_targets():
    targets = [rules.metrics_table.output.table]
    for w in WIDTHS:
        targets.append(path_of("persistence", "table", width=w))
        targets.extend(f.format(width=w) for f in rules.figures.output)
        if SOURCE == "trained":
            targets.extend(f.format(width=w) for f in rules.lm_figures.output)
            targets.append(path_of("lm_digest", "digest", width=w))
    if SOURCE == "trained":
        targets.extend(rules.quality_figure.output)
    if CROSS:
        targets.append(rules.cross_table.output.table)
        targets.extend(path_of("cross_figure", "figure", narrow=n, wide=w) for n, w in CROSS)
    return targets + explore_targets()


# Resources grow with the width and with the attempt, so a job that was killed for memory is
# resubmitted with more (--retries). Sizes come from the data: n from the width label, the
# feature-vector length from the SAE files themselves once they exist (their size, or the size a
# fetch manifest records); before that (a dry run) only the terms that do not depend on it count.
def sae_bytes(path):
    """Bytes of an SAE parameter file, following a fetch manifest; 0 if not there yet."""
    p = Path(path)
    try:
        return json.loads(p.read_text())["size"] if p.suffix == ".json" else p.stat().st_size
    except (OSError, ValueError, KeyError):
        return 0


def _streamed_bytes(input, n):
    """Both layers' feature vectors (about the size of their SAE files: 2 n d floats each), the
    GEMM blocks in flight and, for the certified solver, the candidate graph."""
    from saematch.certified import K_STREAMED

    vectors = sum(sae_bytes(f) for f in input)
    block = 3 * min(COMPUTE["block"], n) * n * 8
    k = config["assign"]["k"] or K_STREAMED  # null: default_k, at most K_STREAMED
    candidates = n * 64 * k if solver_of(n) == "certified" else 0
    return vectors + block + candidates


def mem_mb_pair(wc, input, attempt):
    """Cost matrix, candidate graph or assignment of one layer pair (cross-width: n_a x n_b,
    counted as the wider side's n where the size is n x n). Dense LAP: the float32 matrix,
    LAPJV's float64 copy and its work arrays (about 20 bytes a pair). Certified LAP: also the
    products A @ B.T it keeps in memory where they fit (saematch.certified.products_bytes), in
    float32 or, on a CPU that screens (bf16 or int8), as bf16 (up to 46340^2): the larger of the
    two."""
    from saematch.certified import products_bytes

    n_a, n_b = pair_features(wc)
    dense = "cost" in input.keys()
    need = n_a * n_b * 20 if dense else _streamed_bytes(input, n_b)
    if "candidates" in input.keys():
        need += max(products_bytes(n_a, n_b), products_bytes(n_a, n_b, itemsize=2))
    return attempt * (2048 + need // 2**20)


def mem_mb_sae(wc, input, attempt):
    """Jobs that hold a few SAEs in float32 and float64 (about 4x their files)."""
    return attempt * (2048 + 4 * sum(sae_bytes(f) for f in input) // 2**20)


def runtime_min(wc, attempt):
    """Minutes: a 16k pair takes a few minutes on a CPU node; dense cost grows with n^2
    (cross-width: n_a n_b)."""
    n_a, n_b = pair_features(wc)
    return attempt * (20 + 10 * (n_a // 16384) * (n_b // 16384))
