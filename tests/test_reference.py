"""The paper's Tables 1-4 shipped in `mixerbench/reference/` (the paper's Tables 1-4)."""

from __future__ import annotations

import pytest

from mixerbench import reference
from mixerbench.errors import UserError

SLUGS = {
    "mixer-s32", "mixer-s16", "mixer-b32", "mixer-b16", "mixer-l32", "mixer-l16", "mixer-h14",
    "vit-s16", "vit-s32", "vit-b16", "vit-b32", "vit-l16", "vit-l32", "vit-h14", "resnet50",
    "bit-r50x1", "bit-r50x3", "bit-r101x1", "bit-r101x3", "bit-r152x2", "bit-r152x4",
}


@pytest.mark.parametrize("name", reference.TABLES)
def test_tables_load_tidy_with_source(name):
    df = reference.load_table(name)
    assert len(df) > 0
    assert df["source"].str.startswith("P Table").all()
    assert all(c == c.lower() and " " not in c for c in df.columns)
    if "model" in df.columns:
        assert set(df["model"]) - {""} <= SLUGS
    df.loc[0, "source"] = "changed"  # a copy: the packaged table is not affected
    assert reference.load_table(name).loc[0, "source"] != "changed"


def test_table_aliases_and_unknown_name():
    assert reference.load_table("Table 2").equals(reference.load_table("table2"))
    assert reference.load_table("3").equals(reference.load_table("table3"))
    with pytest.raises(UserError, match="table2"):
        reference.load_table("tabel2")


def test_table1_exact():
    t = reference.load_table("table1").set_index("paper_name")
    assert list(t["params_m"]) == [19, 18, 60, 59, 206, 207, 431]
    assert list(t["layers"]) == [8, 8, 12, 12, 24, 24, 32]
    assert list(t["patch"]) == [32, 16, 32, 16, 32, 16, 14]
    assert list(t["seq_len"]) == [49, 196, 49, 196, 49, 196, 256]
    assert (t["mlp_channels"] == 4 * t["hidden"]).all()
    assert (t["mlp_tokens"] * 2 == t["hidden"]).all()
    assert t.at["Mixer-B/16", "params_with_head"] == 59_880_472
    assert t.at["Mixer-B/32", "params_with_head"] == 60_293_428
    assert t.at["Mixer-L/16", "params_with_head"] == 208_196_168
    assert t["params_with_head"].notna().sum() == 3


def test_table2_spot_checks():
    t = reference.load_table("table2")
    h14 = t[(t["model"] == "mixer-h14")].iloc[0]
    assert (h14["top1"], h14["top1_real"], h14["top1_avg5"], h14["top1_vtab"]) == (
        87.94, 90.18, 95.71, 75.33)
    assert (h14["throughput"], h14["core_days"], h14["pretrain"], h14["img_size"]) == (
        40, 1010, "jft300m", 448)
    bit = t[(t["model"] == "bit-r152x4") & (t["pretrain"] == "jft300m")].iloc[0]
    assert bit["core_days"] == 9900 and bit["top1"] == 87.54
    halo = t[t["paper_name"] == "HaloNet"].iloc[0]
    assert halo["model"] == "" and halo["top1"] == 85.8 and halo["core_days"] == 100
    assert len(t) == 10


def test_table3_spot_checks_and_flags():
    t = reference.load_table("table3")
    assert len(t) == 26
    b16 = t[(t["model"] == "mixer-b16") & (t["pretrain"] == "imagenet")].iloc[0]
    assert (b16["top1"], b16["top1_real"], b16["top1_avg5"], b16["throughput"], b16["core_days"]) \
        == (76.44, 82.36, 88.33, 1384, 10)
    assert b16["core_days_extrapolated"] and not b16["personal_communication"]
    vit = t[(t["model"] == "vit-b16") & (t["pretrain"] == "imagenet")].iloc[0]
    assert vit["personal_communication"] and vit["top1"] == 79.67
    jft = t[t["pretrain"] == "jft300m"]
    assert not jft["core_days_extrapolated"].any()
    assert jft[jft["paper_name"] == "BiT-R50x1"]["top1_avg5"].isna().all()  # "—" in the paper
    l16 = jft[(jft["model"] == "mixer-l16") & (jft["img_size"] == 448)].iloc[0]
    assert (l16["top1"], l16["epochs"], l16["core_days"]) == (86.78, 14, 450)


def test_table4_spot_checks():
    t = reference.load_table("table4")
    b = t[(t["paper_name"] == "Mixer-B") & (t["pretrain"] == "imagenet")].iloc[0]
    assert (b["epochs"], b["lr"], b["wd"], b["randaug_m"], b["mixup_p"], b["dropout"],
            b["stoch_depth"]) == (300, 0.001, 0.1, 15, 0.5, 0.0, 0.1)
    l21 = t[(t["paper_name"] == "Mixer-L") & (t["pretrain"] == "imagenet21k")].iloc[0]
    assert (l21["randaug_m"], l21["mixup_p"]) == (20, 0.5)
    jft_l = t[(t["paper_name"] == "Mixer-L") & (t["pretrain"] == "jft300m")]
    assert sorted(jft_l["epochs"]) == [7, 14] and jft_l["randaug_m"].isna().all()


@pytest.mark.parametrize("kwargs, expected", [
    (dict(model="mixer-b16"), 76.44),                       # from scratch on ImageNet (Table 3)
    (dict(model="Mixer-B/16", pretrain="imagenet21k"), 80.64),
    (dict(model="mixer-h14", pretrain="jft300m", img_size=448), 87.94),  # Table 2
    (dict(model="mixer-h14", pretrain="JFT-300M"), 86.32),  # Table 3 at 224
    (dict(model="mixer-l16", pretrain="jft300m"), 84.82),   # longest schedule when 7 and 14 exist
    (dict(model="mixer-l16", pretrain="jft300m", epochs=7), 84.05),
    (dict(model="mixer-l16", pretrain="in21k", img_size=448), 83.91),  # Table 3 preferred
    (dict(model="vit-b16", dataset="imagenet-real"), 84.97),
    (dict(model="mixer-b16", dataset="cifar10"), None),     # the paper has no per-dataset number
    (dict(model="timm:mixer_b16_224"), None),
    (dict(model="mixer-s32"), None),                        # no ImageNet-from-scratch row
])
def test_paper_top1(kwargs, expected):
    assert reference.paper_top1(**kwargs) == expected


def test_paper_throughput():
    assert reference.paper_throughput("mixer-b16") == 1384
    assert reference.paper_throughput("Mixer-L/16", img_size=448) == 105
    assert reference.paper_throughput("resnet50") is None


def test_official_finetune_numbers_carry_their_source():
    """The official repository's CIFAR-10 fine-tunes (its README), the only per-dataset
    transfer numbers published for the paper's Mixers."""
    assert reference.official_finetune("Mixer-L/16", "CIFAR-10", "imagenet-21k") == 98.34
    assert reference.official_finetune("mixer-b16", "cifar10", "imagenet") == 96.72
    assert reference.official_finetune("mixer-b16", "cifar10", "in21k", img_size=448) is None
    assert reference.official_finetune("mixer-b16", "pets", "in21k") is None
    assert reference._read_vt()["source"].eq("VT README").all()
