"""The `minhash` stage: near-duplicate pairs collapse to one survivor per cluster.

Graph (each arrow a Beam step; the per-element logic is in plain functions here and in
``filters.minhash_kernel``):

    pairs ─batch─> signatures (vectorised; datasketch-compatible)
          ─band──> ((scope, band, band hash), id) ─group─> bucket: all pairs of a small bucket, or each member
                   of a hot bucket linked to its smallest id (linear, never all pairs)
          ─verify> candidate edges joined with both endpoints' signatures (or shingle sets); an edge is kept
                   only when the estimated (or exact) Jaccard reaches the threshold
          ─components─> union-find in one worker (mergeable CombineFn) while the verified edges are at
                   most ``local_union_find_max_edges``; otherwise large-star/small-star rounds, each one
                   GroupByKey, with a one-worker union-find over whatever the rounds left unmerged
          ─decide> per component: survivor by an explicit rule; the others become rejects naming it;
                   components above ``max_component_size`` are reported and left whole
          ─join──> pairs keyed by id meet the removals: kept pairs out, removed pairs as rejects

Nothing depends on arrival or GroupByKey order: bucket members, components and clusters are sorted by id;
the cluster id is the smallest id of the component; the survivor is chosen by rule.
"""

from __future__ import annotations

from typing import Any, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from filters import minhash_kernel as kernel
from filters.stage import Stage
from pipelines.core.config import MinHashConfig
from pipelines.core.records import RejectPolicy, make_reject

STAGE = "minhash"
REASON = "near_duplicate"
MALFORMED = "malformed_pair"
# Largest components listed by name in the report (all are counted).
MAX_REPORTED_GIANTS = 100
_SIMILARITY_DIGITS = 4


# ----------------------------------------------------------------------------------------- plain functions

def comparable_text(pair: dict[str, Any], text: str) -> str:
    """The text compared for near-duplicates: query + document, the query only or the document only."""
    if text == "pair":
        return pair["query"] + "\n" + pair["document"]
    return pair[text]


def scope_key(pair: dict[str, Any], scope: str) -> str:
    """Pairs are compared only with pairs of the same scope key: their DATASET, or all of the run."""
    return pair["dataset"] if scope == "dataset" else ""


def pair_problem(pair: Any) -> str | None:
    """Why a pair cannot be compared (None when it can)."""
    if not isinstance(pair, dict):
        return "not a pair record"
    for key in ("id", "dataset", "query", "document"):
        if not isinstance(pair.get(key), str):
            return f"field '{key}' missing or not text"
    if not pair["id"]:
        return "empty id"
    return None


def resolve_banding(config: MinHashConfig) -> tuple[int, int]:
    """(bands, rows): as configured, or from datasketch's optimizer weighted as configured, aimed at
    ``threshold - candidate_margin`` (128 permutations at 0.8 - 0.05 give 16 x 8: a pair at Jaccard 0.85 is
    a candidate with probability 0.994, instead of 0.975 with 14 x 9 aimed at 0.8)."""
    if config.bands is not None:
        return config.bands, config.rows
    aim = max(config.threshold - config.candidate_margin, 0.01)
    return kernel.lsh_params(round(aim, 6), config.num_perm, config.false_positive_weight,
                             config.false_negative_weight)


def payload_similarity(payload_a: bytes, payload_b: bytes, verify: str) -> float:
    """Signature estimate of Jaccard (payloads are signatures) or exact Jaccard (payloads are the sorted
    unique shingle hashes)."""
    a = np.frombuffer(payload_a, dtype=np.uint32)
    b = np.frombuffer(payload_b, dtype=np.uint32)
    if verify == "signature":
        return kernel.estimated_jaccard(a, b)
    return kernel.exact_jaccard(a, b)


def band_entries(sketch: tuple, bands: int, rows: int) -> list[tuple[bytes, str]]:
    """((scope, band index, band hash) as one bytes key, id) for every band of a sketch."""
    pair_id, scope, _, signature, _ = sketch
    prefix = scope.encode("utf-8", "surrogatepass") + b"\x00"
    digests = kernel.band_hashes(np.frombuffer(signature, dtype=np.uint32), bands, rows)
    return [(prefix + band.to_bytes(2, "big") + digest, pair_id) for band, digest in enumerate(digests)]


def decide_cluster(cluster_id: str, members: Iterable[tuple[str, int, bytes]], *, survivor_rule: str,
                   verify: str, max_size: int) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """One connected component -> (its size, [(removed id, reject detail), ...]).

    A component larger than ``max_size`` is not trusted (templated text chains unrelated pairs): nothing is
    removed and only its size is returned. Members are read once and at most ``max_size + 1`` are held."""
    held: list[tuple[str, int, bytes]] = []
    size = 0
    for member in members:
        size += 1
        if size <= max_size:
            held.append(member)
        elif held:
            held = []  # giant: stop holding, keep counting
    if size > max_size:
        return size, []
    unique = {member[0]: member for member in held}  # the same id twice (input given twice) is one node
    survivor_id = kernel.choose_survivor([(member_id, length) for member_id, length, _ in unique.values()],
                                         survivor_rule)
    survivor_payload = unique[survivor_id][2]
    removed = []
    for member_id in sorted(unique):
        if member_id == survivor_id:
            continue
        similarity = payload_similarity(unique[member_id][2], survivor_payload, verify)
        removed.append((member_id, {"cluster_id": cluster_id, "survivor_id": survivor_id,
                                    "similarity": round(similarity, _SIMILARITY_DIGITS),
                                    "cluster_size": size}))
    return size, removed


def build_report(config: MinHashConfig, bands: int, rows: int, *, candidate_edges: int, verified_edges: int,
                 removed: int, cluster_stats: dict[str, Any], too_few_shingles: int,
                 malformed: int) -> dict[str, Any]:
    """The stage's manifest entry (sorted keys)."""
    report = {
        "stage": STAGE,
        "parameters": {
            "num_perm": config.num_perm, "bands": bands, "rows": rows, "threshold": config.threshold,
            "shingle": config.shingle, "ngram": config.ngram, "seed": config.seed, "text": config.text,
            "scope": config.scope, "verify": config.verify, "scheme": config.scheme,
            "token_hash": config.token_hash, "survivor": config.survivor,
            "candidate_margin": config.candidate_margin,
            "max_component_size": config.max_component_size, "min_shingles": config.min_shingles,
            "bucket_all_pairs_max": config.bucket_all_pairs_max,
            "candidate_probability_at_threshold": round(
                kernel.candidate_probability(config.threshold, bands, rows), 4),
        },
        "clusters": cluster_stats["clusters"],
        "removed": removed,
        "cluster_size_histogram": cluster_stats["histogram"],
        "giant_components": cluster_stats["giants"],
        "giant_component_count": cluster_stats["giant_count"],
        "candidate_edges": candidate_edges,
        "verified_edges": verified_edges,
        "components_method": ("local" if verified_edges <= config.local_union_find_max_edges
                              else "distributed"),
        "too_few_shingles": too_few_shingles,
        "malformed": malformed,
    }
    return _sorted_dict(report)


def _sorted_dict(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_dict(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_dict(item) for item in value]
    return value


# ------------------------------------------------------------------------------------------- Beam pieces

class _SignBatch(beam.DoFn):
    """A batch of pairs -> sketches (id, scope, document length, signature bytes, payload bytes).

    Pairs with fewer than ``min_shingles`` shingles get no sketch: they cannot be compared and pass the
    stage untouched (counted). The payload is what verification compares: the signature itself, or the
    sorted unique shingle hashes for exact verification."""

    def __init__(self, config: MinHashConfig):
        self.config = config

    def setup(self):
        self.too_few = Metrics.counter(STAGE, "too_few_shingles")
        self.signed = Metrics.counter(STAGE, "signed")

    def process(self, batch):
        config = self.config
        texts = [comparable_text(pair, config.text) for pair in batch]
        signatures, hashes, counts = kernel.text_signatures(
            texts, kind=config.shingle, ngram=config.ngram, num_perm=config.num_perm, seed=config.seed,
            scheme=config.scheme, token_hash=config.token_hash)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        minimum = max(config.min_shingles, 1)
        for index, pair in enumerate(batch):
            if counts[index] < minimum:
                self.too_few.inc()
                yield beam.pvalue.TaggedOutput("too_few", pair["id"])
                continue
            self.signed.inc()
            signature = signatures[index].tobytes()
            payload = (b"" if config.verify == "signature"
                       else np.unique(hashes[offsets[index]:offsets[index + 1]]).tobytes())
            yield (pair["id"], scope_key(pair, config.scope), len(pair["document"]), signature, payload)


class _UnionFindCombine(beam.CombineFn):
    """Edges -> {node: smallest id of its component}. Accumulators are union-find forests that merge."""

    def create_accumulator(self):
        return kernel.UnionFind()

    def add_input(self, forest, edge):
        forest.union(edge[0], edge[1])
        return forest

    def merge_accumulators(self, forests):
        forests = iter(forests)
        merged = next(forests)
        for forest in forests:
            merged.merge(forest)
        return merged

    def extract_output(self, forest):
        return forest.roots()


class _ClusterStatsCombine(beam.CombineFn):
    """(size, cluster id, giant) per component -> cluster count, size histogram, giant components."""

    def create_accumulator(self):
        return {"histogram": {}, "giants": [], "clusters": 0, "giant_count": 0}

    def add_input(self, stats, cluster):
        size, cluster_id, giant = cluster
        stats["clusters"] += 1
        stats["histogram"][size] = stats["histogram"].get(size, 0) + 1
        if giant:
            stats["giant_count"] += 1
            stats["giants"] = self._top(stats["giants"] + [(size, cluster_id)])
        return stats

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for stats in accumulators:
            merged["clusters"] += stats["clusters"]
            merged["giant_count"] += stats["giant_count"]
            for size, count in stats["histogram"].items():
                merged["histogram"][size] = merged["histogram"].get(size, 0) + count
            merged["giants"] = self._top(merged["giants"] + stats["giants"])
        return merged

    def extract_output(self, stats):
        return {
            "clusters": stats["clusters"],
            "giant_count": stats["giant_count"],
            "histogram": {str(size): stats["histogram"][size] for size in sorted(stats["histogram"])},
            "giants": [{"cluster_id": cluster_id, "size": size} for size, cluster_id in stats["giants"]],
        }

    @staticmethod
    def _top(giants):
        return sorted(giants, key=lambda giant: (-giant[0], giant[1]))[:MAX_REPORTED_GIANTS]


def _both_directions(edge):
    yield edge[0], edge[1]
    yield edge[1], edge[0]


class _StarStep(beam.PTransform):
    """One large-star or small-star operation: group each node's neighbours, emit the new edges."""

    def __init__(self, operation):
        super().__init__()
        self.operation = operation

    def expand(self, edges):
        operation = self.operation
        return (edges
                | "BothWays" >> beam.FlatMap(_both_directions)
                | "Neighbours" >> beam.GroupByKey()
                | "Star" >> beam.FlatMapTuple(lambda node, neighbors: operation(node, neighbors)))


def _labels_and_messages(node, neighbors):
    """After the rounds: a node's label, and that label sent to each neighbour."""
    neighbors = set(neighbors)
    label = kernel.star_label(node, neighbors)
    yield beam.pvalue.TaggedOutput("labels", (node, label))
    for neighbor in neighbors:
        yield neighbor, label


def _contract(element):
    node, grouped = element
    for label in grouped["label"]:
        yield from kernel.contracted_edges(node, label, grouped["message"])


def _finish_label(element, finished):
    node, label = element
    return node, finished.get(label, label)


class DistributedComponents(beam.PTransform):
    """Edges -> (node, smallest id of its component), without holding the graph in one worker: ``rounds``
    of large-star then small-star, then each node's label (smallest of itself and its neighbours); labels
    that the rounds left connected (none once converged) are merged by a one-worker union-find."""

    def __init__(self, rounds: int):
        super().__init__()
        self.rounds = rounds

    def expand(self, edges):
        for round_index in range(self.rounds):
            edges = (edges
                     | f"LargeStar{round_index}" >> _StarStep(kernel.large_star)
                     | f"SmallStar{round_index}" >> _StarStep(kernel.small_star))
        labelled = (edges
                    | "BothWays" >> beam.FlatMap(_both_directions)
                    | "Neighbours" >> beam.GroupByKey()
                    | "Label" >> beam.FlatMapTuple(_labels_and_messages).with_outputs("labels", main="messages"))
        leftover = ({"label": labelled.labels, "message": labelled.messages}
                    | "JoinLabels" >> beam.CoGroupByKey()
                    | "Contract" >> beam.FlatMap(_contract))
        finished = leftover | "FinishLocally" >> beam.CombineGlobally(_UnionFindCombine())
        return labelled.labels | "Finish" >> beam.Map(_finish_label, beam.pvalue.AsSingleton(finished))


class LocalComponents(beam.PTransform):
    """Edges -> (node, smallest id of its component) with one union-find (built from mergeable partial
    forests, so the edges are read in parallel; the final forest must fit one worker)."""

    def expand(self, edges):
        return (edges
                | "UnionFind" >> beam.CombineGlobally(_UnionFindCombine())
                | "Nodes" >> beam.FlatMap(lambda roots: sorted(roots.items())))


# --------------------------------------------------------------------------------------------- the stage

class MinHashDedup(beam.PTransform):
    """Near-duplicate removal. ``expand(pairs)`` -> {"pairs", "rejects", "report"}."""

    def __init__(self, config: MinHashConfig, policy: RejectPolicy):
        super().__init__()
        self.config = config
        self.policy = policy
        self.bands, self.rows = resolve_banding(config)

    def expand(self, pairs):
        config, policy = self.config, self.policy
        bands, rows = self.bands, self.rows
        threshold, verify = config.threshold, config.verify
        counted_in = Metrics.counter(STAGE, "in")
        counted_out = Metrics.counter(STAGE, "out")
        dropped = Metrics.counter(STAGE, f"dropped_{REASON}")
        dropped_malformed = Metrics.counter(STAGE, f"dropped_{MALFORMED}")
        candidate_counter = Metrics.counter(STAGE, "candidate_edges")
        verified_counter = Metrics.counter(STAGE, "verified_edges")
        giant_counter = Metrics.counter(STAGE, "giant_components")

        def check(pair):
            counted_in.inc()
            problem = pair_problem(pair)
            if problem is None:
                yield pair
                return
            dropped_malformed.inc()
            safe = pair if isinstance(pair, dict) else {}
            yield beam.pvalue.TaggedOutput("malformed", make_reject(
                safe, stage=STAGE, reason=MALFORMED, detail={"problem": problem}, policy=policy))

        checked = pairs | "Check" >> beam.FlatMap(check).with_outputs("malformed", main="valid")
        valid = checked.valid

        # 1. Signatures, in batches (vectorised kernel).
        signed = (valid
                  | "Batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=512)
                  | "Sign" >> beam.ParDo(_SignBatch(config)).with_outputs("too_few", main="sketches"))
        sketches = signed.sketches
        # What verification and survivor choice need of each node: (id, (document length, payload)).
        node_info = sketches | "NodeInfo" >> beam.Map(
            lambda sketch: (sketch[0], (sketch[2], sketch[4] or sketch[3])))

        # 2. LSH: group on (scope, band, band hash); link the members of each bucket.
        all_pairs_max = config.bucket_all_pairs_max

        def link(bucket):
            yield from kernel.bucket_edges(bucket[1], all_pairs_max)

        def count_candidate(edge):
            candidate_counter.inc()
            return edge

        candidates = (sketches
                      | "Bands" >> beam.FlatMap(band_entries, bands, rows)
                      | "Buckets" >> beam.GroupByKey()
                      | "Link" >> beam.FlatMap(link)
                      | "UniqueEdges" >> beam.Distinct()
                      | "CountCandidates" >> beam.Map(count_candidate))

        # 3. Verification: bring the smaller endpoint's payload to the larger one, compare there.
        def send_representative(element):
            representative, grouped = element
            infos = list(grouped["node"])
            if not infos:
                return
            payload = infos[0][1]
            for member in sorted(set(grouped["members"])):
                yield member, (representative, payload)

        def verify_edges(element):
            member, grouped = element
            infos = list(grouped["node"])
            if not infos:
                return
            payload = infos[0][1]
            for representative, representative_payload in sorted(grouped["representatives"]):
                similarity = payload_similarity(payload, representative_payload, verify)
                if similarity >= threshold:
                    verified_counter.inc()
                    yield representative, member

        to_members = ({"node": node_info, "members": candidates}
                      | "JoinRepresentative" >> beam.CoGroupByKey()
                      | "SendRepresentative" >> beam.FlatMap(send_representative))
        verified = ({"node": node_info, "representatives": to_members}
                    | "JoinMember" >> beam.CoGroupByKey()
                    | "Verify" >> beam.FlatMap(verify_edges))

        # 4. Connected components: one worker while the edges fit, distributed rounds beyond.
        edge_count = verified | "CountVerified" >> beam.combiners.Count.Globally()
        limit = config.local_union_find_max_edges
        local = (verified
                 | "FitsOneWorker" >> beam.Filter(lambda _, count: count <= limit,
                                                  beam.pvalue.AsSingleton(edge_count))
                 | "LocalComponents" >> LocalComponents())
        distributed = (verified
                       | "TooLargeForOneWorker" >> beam.Filter(lambda _, count: count > limit,
                                                               beam.pvalue.AsSingleton(edge_count))
                       | "DistributedComponents" >> DistributedComponents(config.distributed_rounds))
        assignment = (local, distributed) | "Components" >> beam.Flatten()

        # 5. Per cluster: survivor by rule, the others removed (giant clusters left whole).
        def to_cluster(element):
            node, grouped = element
            infos = list(grouped["node"])
            if not infos:
                return
            length, payload = infos[0]
            for root in grouped["root"]:
                yield root, (node, length, payload)

        def decide(element):
            cluster_id, members = element
            size, removed = decide_cluster(cluster_id, members, survivor_rule=config.survivor, verify=verify,
                                           max_size=config.max_component_size)
            giant = size > config.max_component_size
            if giant:
                giant_counter.inc()
            yield beam.pvalue.TaggedOutput("clusters", (size, cluster_id, giant))
            yield from removed

        decided = ({"node": node_info, "root": assignment}
                   | "JoinCluster" >> beam.CoGroupByKey()
                   | "ToCluster" >> beam.FlatMap(to_cluster)
                   | "Clusters" >> beam.GroupByKey()
                   | "Decide" >> beam.FlatMap(decide).with_outputs("clusters", main="removed"))
        removed = decided.removed

        keyed_pairs = valid | "KeyPairs" >> beam.Map(lambda pair: (pair["id"], pair))
        decisions = {"pair": keyed_pairs, "removed": removed}
        if config.scope == "all":
            # Across datasets a reject also names the survivor's dataset (one more join, by survivor id).
            def survivor_dataset(element):
                _, grouped = element
                survivors = list(grouped["survivor"])
                if survivors:
                    for member in grouped["members"]:
                        yield member, survivors[0]["dataset"]

            decisions["survivor_dataset"] = (
                {"survivor": keyed_pairs,
                 "members": removed | "BySurvivor" >> beam.MapTuple(lambda member, d: (d["survivor_id"], member))}
                | "JoinSurvivor" >> beam.CoGroupByKey()
                | "SurvivorDataset" >> beam.FlatMap(survivor_dataset))

        # 6. Pairs meet their decisions.
        def emit(element):
            _, grouped = element
            details = list(grouped["removed"])
            if details and grouped.get("survivor_dataset"):
                details[0] = {**details[0], "survivor_dataset": sorted(grouped["survivor_dataset"])[0]}
            for pair in grouped["pair"]:
                if details:
                    dropped.inc()
                    yield beam.pvalue.TaggedOutput("rejects", make_reject(
                        pair, stage=STAGE, reason=REASON, detail=details[0], policy=policy))
                else:
                    counted_out.inc()
                    yield pair

        final = (decisions
                 | "JoinDecisions" >> beam.CoGroupByKey()
                 | "Emit" >> beam.FlatMap(emit).with_outputs("rejects", main="pairs"))
        rejects = (final.rejects, checked.malformed) | "AllRejects" >> beam.Flatten()

        # 7. Report.
        def count(pcoll, label):
            return beam.pvalue.AsSingleton(pcoll | label >> beam.combiners.Count.Globally())

        cluster_stats = decided.clusters | "ClusterStats" >> beam.CombineGlobally(_ClusterStatsCombine())
        report = (edge_count
                  | "Report" >> beam.Map(
                      lambda verified_edges, candidate_edges, removed_count, stats, too_few, malformed:
                      build_report(config, bands, rows, candidate_edges=candidate_edges,
                                   verified_edges=verified_edges, removed=removed_count, cluster_stats=stats,
                                   too_few_shingles=too_few, malformed=malformed),
                      count(candidates, "CountCandidateEdges"), count(removed, "CountRemoved"),
                      beam.pvalue.AsSingleton(cluster_stats), count(signed.too_few, "CountTooFew"),
                      count(checked.malformed, "CountMalformed")))
        return {"pairs": final.pairs, "rejects": rejects, "report": report}


STAGE_SPEC = Stage(STAGE, config_key="minhash",
                   transform=lambda config, policy: MinHashDedup(config.minhash, policy))
