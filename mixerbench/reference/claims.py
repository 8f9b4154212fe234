"""The paper's claims that mixerbench tests, as data (arXiv 2105.01601).

Each `Claim` says where the paper makes it (section, table, figure), what we test at our scale,
the statistic and the rule that decide it, the tolerance, the seeds a verdict needs, which
result rows qualify, and the command that produces those rows. `mixerbench.report.claims`
applies the rules to a results folder; nothing here reads results.

The rules (one of three per claim, `Claim.rule`):

- `order`: ours says A exceeds B by more than `margin` (a negative margin allows A to be that far
  below B). Welch's one-sided t-test on the two sides' means, standard deviations over seeds
  (sample std) and seed counts: *held* when it rejects "A - B <= margin" at `ALPHA`, *not held*
  when it rejects "A - B >= margin" at `ALPHA`, each only with at least `min_seeds` seeds on
  both sides; anything else is *not enough evidence*.
- `equivalent`: A and B differ by less than `tolerance` either way. Two one-sided Welch tests
  (TOST): *held* when both reject at `ALPHA`, *not held* when one rejects "|A - B| <= tolerance"
  at `ALPHA`, with at least `min_seeds` seeds a side.
- `match`: a deterministic or same-sample measurement set against the paper's number (a
  parameter count, an evaluation on the very images the paper used): *held* when |ours -
  paper| <= tolerance, *not held* otherwise; a measurement on fewer images than the paper's is
  judged by its binomial sampling interval instead (95 %).
"""

from __future__ import annotations

from dataclasses import dataclass

HELD, NOT_HELD, UNDECIDED = "held", "not held", "not enough evidence"
VERDICTS = (HELD, NOT_HELD, UNDECIDED)
# One-sided significance level of every test; 95 % for the binomial interval of `match`.
ALPHA = 0.05


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as mixerbench tests it (see the module docstring for the rules).

    Attributes:
        id: a short stable name (`shuffle-mixer`).
        title: what is claimed, in a few words.
        source: where the paper makes the claim.
        paper: what the paper reports, with its numbers where it gives them.
        statement: the claim as tested at our scale, one sentence.
        statistic: what is computed from the rows.
        rule: `order`, `equivalent` or `match`.
        margin: `order`: how far A must exceed B (points of the statistic's unit).
        tolerance: `equivalent` and `match`: the largest difference that still holds.
        unit: the statistic's unit.
        min_seeds: the fewest independent runs (seeds; repeats for throughput) a side needs.
        rows: which result rows qualify, and how they are grouped.
        command: the command that produces qualifying rows (what the committed rows ran).
        why: where the margin or tolerance comes from.
    """

    id: str
    title: str
    source: str
    paper: str
    statement: str
    statistic: str
    rule: str
    unit: str
    rows: str
    command: str
    why: str
    margin: float = 0.0
    tolerance: float = 0.0
    min_seeds: int = 3


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="table1-sizes",
        title="Table 1 sizes",
        source="Section 2, Table 1",
        paper="Mixer-S/32 ... H/14 have 19 / 18 / 60 / 59 / 206 / 207 / 431 M parameters "
              "without the head; the official code's tests pin B/16, B/32 and L/16 with the "
              "1000-class head exactly.",
        statement="Every Mixer of Table 1 in our zoo has the paper's parameter count.",
        statistic="our count without the head, rounded to millions, and with the head where "
                  "the official count is known, against the paper's",
        rule="match", unit="M parameters", tolerance=0.0, min_seeds=1,
        rows="tables/table1.csv (the zoo's seven Mixers, written by `reproduce table1`)",
        command="mixerbench reproduce table1",
        why="counts are exact: no difference is allowed",
    ),
    Claim(
        id="competitive",
        title="Mixer competitive with ViT and ResNet at equal budget",
        source="Abstract; Section 3.1, Table 2",
        paper="Mixer attains competitive scores: in Table 2, Mixer-L/16 is 1.15 points below "
              "ViT-L/16 and 1.24 below BiT-R152x4 (ImageNet-21k), Mixer-H/14 0.61 below "
              "ViT-H/14 and 0.40 above BiT-R152x4 (JFT-300M).",
        statement="Trained under one recipe and budget, the Mixer's top-1 is at most 1.25 points "
                  "below the ViT's and below the ResNet's.",
        statistic="mean top-1 over seeds, Mixer minus ViT and Mixer minus ResNet",
        rule="order", unit="top-1 points", margin=-1.25, min_seeds=3,
        rows="accuracy.csv training rows of one `compare` (experiment `compare:<preset>`), one "
             "dataset and split; seeds grouped by recipe",
        command="mixerbench compare --models mixer,vit,resnet --preset smoke --seeds 3",
        why="the largest gap Table 2 still calls competitive is 1.24 points (Mixer-L/16 vs "
            "BiT-R152x4, ImageNet-21k)",
    ),
    Claim(
        id="throughput-train",
        title="Mixer trains faster than ViT",
        source="Section 3.2, Table 3 (throughput, TPU-v3 core-days)",
        paper="Mixer-B/16 1384 vs ViT-B/16 861 img/s/core (1.61x), Mixer-L/16 419 vs ViT-L/16 "
              "280, Mixer-H/14 194 vs ViT-H/14 87, on TPU-v3; Mixer-B/16 pre-trains in fewer "
              "core-days than ViT-B/16 (Table 3).",
        statement="In training, the Mixer processes more images per second than the ViT the "
                  "paper sets it against, on the same device.",
        statistic="mean img/s over timing repeats, Mixer minus ViT, from one `bench` call",
        rule="order", unit="img/s", margin=0.0, min_seeds=3,
        rows="throughput.csv `train` rows of one `bench` call (bench_id): a Mixer and the ViT "
             "of its size and patch that Table 3 has beside it at 224 px (B/16, L/16, H/14), "
             "same device, dtype, batch size, image size and compile setting; n is repeats",
        command="mixerbench reproduce throughput",
        why="the order only: the paper's 1.61x is a TPU-v3 number",
    ),
    Claim(
        id="throughput-infer",
        title="Mixer infers faster than ViT",
        source="Section 3.2, Table 3 (throughput)",
        paper="Mixer-B/16 1384 vs ViT-B/16 861 img/s/core (1.61x) on TPU-v3, and likewise for "
              "L/16 and H/14.",
        statement="In inference, the Mixer processes more images per second than the ViT the "
                  "paper sets it against, on the same device.",
        statistic="mean img/s over timing repeats, Mixer minus ViT, from one `bench` call",
        rule="order", unit="img/s", margin=0.0, min_seeds=3,
        rows="throughput.csv `infer` rows of one `bench` call (bench_id): a Mixer and the ViT "
             "of its size and patch that Table 3 has beside it at 224 px (B/16, L/16, H/14), "
             "same device, dtype, batch size, image size and compile setting; n is repeats",
        command="mixerbench reproduce throughput",
        why="the order only: the paper's 1.61x is a TPU-v3 number",
    ),
    Claim(
        id="shuffle-mixer",
        title="Mixer invariant to a patch+pixel shuffle",
        source="Section 3.4, Figure 4",
        paper="Mixer-B/16 trained on images whose patches, and the pixels within them, are "
              "shuffled by one fixed permutation: its curve and the original's \"match "
              "perfectly\".",
        statement="The Mixer trained and tested under a fixed patch+pixel permutation reaches "
                  "the original's top-1 within 1 point.",
        statistic="mean top-1 over seeds, patch+pixel shuffled minus original",
        rule="equivalent", unit="top-1 points", tolerance=1.0, min_seeds=3,
        rows="shuffle.csv `top1` rows of the Mixer (`patch` against `none`), same model, "
             "dataset and image size, and the same epochs and steps (accuracy.csv, by run id)",
        command="mixerbench reproduce shuffle --budget cpu --data-dir ~/data",
        why="the Mixer is invariant by construction up to its initialisation, so only seed "
            "noise remains: 1 point is about twice our small Mixers' seed std (0.55 on mnist-5k)",
    ),
    Claim(
        id="shuffle-resnet",
        title="ResNet hurt by the same shuffle",
        source="Section 3.4, Figure 4",
        paper="ResNet50x1 under the same patch+pixel permutation \"drops significantly\"; under "
              "a global pixel permutation Mixer drops about 45 % and the ResNet about 75 %.",
        statement="The ResNet trained and tested under the same patch+pixel permutation loses "
                  "more than 1 point of top-1.",
        statistic="mean top-1 over seeds, original minus patch+pixel shuffled",
        rule="order", unit="top-1 points", margin=1.0, min_seeds=3,
        rows="shuffle.csv `top1` rows of the ResNet (`none` against `patch`), same model, "
             "dataset and image size, and the same epochs and steps (accuracy.csv, by run id)",
        command="mixerbench reproduce shuffle --budget cpu --data-dir ~/data",
        why="a drop must exceed the Mixer's invariance tolerance to tell the two apart",
    ),
    Claim(
        id="data-scaling-resnet",
        title="Mixer gains more from data than the ResNet",
        source="Section 3.3, Figure 2 (right)",
        paper="On 3 / 10 / 30 / 100 % of JFT-300M at equal compute, Mixer-L/16 keeps improving "
              "while BiT-R152x2 plateaus (linear 5-shot ImageNet).",
        statement="From the smallest to the largest subset at equal compute, the Mixer's top-1 "
                  "rises more than the ResNet's.",
        statistic="per seed, top-1 at the largest fraction minus at the smallest; the Mixer's "
                  "mean gain minus the ResNet's",
        rule="order", unit="top-1 points", margin=0.0, min_seeds=3,
        rows="scaling.csv `top1` rows, one dataset and number of steps; a seed counts when it "
             "has both the smallest and the largest fraction",
        command="mixerbench reproduce data-scaling --budget cpu --data-dir ~/data",
        why="the direction only: the paper gives no curve values",
    ),
    Claim(
        id="data-scaling-vit",
        title="Mixer gains more from data than ViT",
        source="Section 3.3, Figure 2 (right)",
        paper="The gap between Mixer-L/16 and ViT-L/16 shrinks as the pre-training subset grows.",
        statement="From the smallest to the largest subset at equal compute, the Mixer's top-1 "
                  "rises more than the ViT's.",
        statistic="per seed, top-1 at the largest fraction minus at the smallest; the Mixer's "
                  "mean gain minus the ViT's",
        rule="order", unit="top-1 points", margin=0.0, min_seeds=3,
        rows="scaling.csv `top1` rows, one dataset and number of steps; a seed counts when it "
             "has both the smallest and the largest fraction",
        command="mixerbench reproduce data-scaling --budget cpu --data-dir ~/data",
        why="the direction only: the paper gives no curve values",
    ),
    Claim(
        id="higher-resolution",
        title="Higher-resolution fine-tuning helps",
        source="Section 3, Appendix C; Table 3",
        paper="Fine-tuning Mixer-L/16 at 448 instead of 224 px (block-diagonal token-MLP "
              "expansion) raises ImageNet top-1 from 82.89 to 83.91 (ImageNet-21k) and from "
              "84.82 to 86.78 (JFT-300M).",
        statement="The same upstream Mixer fine-tuned at 2x its resolution beats it fine-tuned "
                  "at 1x, with the same steps.",
        statistic="mean top-1 over fine-tuning seeds, 2x minus 1x",
        rule="order", unit="top-1 points", margin=0.0, min_seeds=3,
        rows="accuracy.csv `transfer` fine-tuning rows (the upstream run's row in accuracy.csv "
             "gives the 1x size; a seed is one upstream run and its fine-tuning, pooled by the "
             "upstream's recipe) and avg5.csv rows (`resolution`, one init), same downstream "
             "dataset, split and steps",
        command="mixerbench reproduce transfer --budget cpu --data-dir ~/data",
        why="the direction only: the paper's gains are at ImageNet scale",
    ),
    Claim(
        id="avg5",
        title="Transfer Avg 5 as in Tables 2-3",
        source="Section 3, Tables 2-3 (Avg 5)",
        paper="Mean top-1 over ImageNet, CIFAR-10, CIFAR-100, Pets and Flowers after "
              "fine-tuning, e.g. Mixer-B/16 from ImageNet-21k 92.50 at 224 px (Table 3); Mixer "
              "numbers are means of 3 fine-tuning runs with std < 0.1.",
        statement="Our transfer protocol's mean over the five datasets is within 1 point of the "
                  "paper's Avg 5 for the same weights and resolution.",
        statistic="mean of the five datasets' test top-1, ours minus the paper's",
        rule="match", unit="top-1 points", tolerance=1.0, min_seeds=1,
        rows="avg5.csv rows on the full test split of all five datasets, one model, upstream, "
             "resolution and init",
        command="mixerbench reproduce avg5 --init timm:mixer_b16_224.goog_in21k --budget full "
                "--data-dir ~/data",
        why="the paper's fine-tuning std is < 0.1, so one run per dataset; 1 point allows for "
            "the details the paper leaves open (warm-up, crop at 448)",
    ),
    Claim(
        id="released",
        title="Released weights score as in Tables 2-3",
        source="Sections 3.1-3.2, Tables 2-3 (ImageNet top-1, ReaL)",
        paper="e.g. Mixer-B/16 from ImageNet-21k fine-tuned at 224 px: 80.64 top-1, 85.80 ReaL "
              "(Table 3).",
        statement="A released checkpoint evaluated on ImageNet val scores within 0.5 points of "
                  "the paper's row it stands for (top-1, and ReaL where measured).",
        statistic="top-1 (and ReaL top-1) on ImageNet val, ours minus the paper's",
        rule="match", unit="top-1 points", tolerance=0.5, min_seeds=1,
        rows="released.csv rows (the latest per checkpoint) with a paper row to compare",
        command="mixerbench reproduce released --dataset imagenet-1k --data-dir ~/data "
                "--real-labels real.json",
        why="the same 50,000 images as the paper: only preprocessing and numerics differ",
    ),
)


def get_claim(claim_id: str) -> Claim:
    """The claim with id `claim_id` (KeyError when there is none)."""
    for c in CLAIMS:
        if c.id == claim_id:
            return c
    raise KeyError(claim_id)


__all__ = ["ALPHA", "CLAIMS", "Claim", "HELD", "NOT_HELD", "UNDECIDED", "VERDICTS", "get_claim"]
