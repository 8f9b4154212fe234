"""One of each: one loss, one place that chooses device and dtype, one name per concept,
progress events declared where they are emitted, help text read from the registries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mixerbench"


def _modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def _called(tree: ast.AST) -> set[str]:
    """Names of the functions a module calls (`f(...)` and `x.f(...)` both give `f`)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return out


def _attributes(tree: ast.AST) -> set[str]:
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


def test_one_cross_entropy_serves_training_evaluation_and_the_train_benchmark():
    """Only mixerbench/loss.py computes a cross-entropy (torch's or timm's); the training step,
    `evaluate` and `bench --mode train` call that one function."""
    losses = {"cross_entropy", "CrossEntropyLoss", "nll_loss", "log_softmax",
              "SoftTargetCrossEntropy", "LabelSmoothingCrossEntropy"}
    callers = set()
    for path, tree in _modules().items():
        if path == "mixerbench/loss.py":
            assert "cross_entropy" in _attributes(tree)  # torch's, called here and only here
            continue
        assert not losses & _attributes(tree), f"{path} computes a loss of its own"
        calls = {n.func.id for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if losses & calls:
            imported = {(n.module, a.name) for n in ast.walk(tree)
                        if isinstance(n, ast.ImportFrom) for a in n.names}
            assert ("mixerbench.loss", "cross_entropy") in imported, path
            callers.add(path)
    assert callers == {"mixerbench/train.py", "mixerbench/evaluate.py", "mixerbench/bench.py"}


def test_the_one_loss_is_what_evaluate_reports_and_accepts_soft_targets():
    import torch

    from mixerbench.evaluate import accuracy
    from mixerbench.loss import cross_entropy

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    got = accuracy(model, [(x[:7], y[:7]), (x[7:], y[7:])])["loss"]
    with torch.no_grad():
        logits = model(x)
    assert got == pytest.approx(cross_entropy(logits, y).item(), rel=1e-6)
    # one-hot soft targets (Mixup and label smoothing arrive as these) give the same loss
    soft = torch.nn.functional.one_hot(y, 4).float()
    assert cross_entropy(logits, soft).item() == pytest.approx(cross_entropy(logits, y).item())
    # low-precision logits are scored in float32
    assert cross_entropy(logits.bfloat16(), y).dtype == torch.float32


def test_device_and_dtype_are_chosen_in_runtime_only():
    """`runtime.choose` is the one decision: training (`prepare`), evaluate and bench call it, and nothing
    else resolves a dtype, makes a device current or switches TF32 on."""
    trees = _modules()
    for path, tree in trees.items():
        if path == "mixerbench/runtime.py":
            continue
        assert not {"resolve_dtype", "set_device", "use_device"} & _called(tree) - (
            {"use_device"} if path == "mixerbench/prepare.py" else set()), path
        assert "allow_tf32" not in _attributes(tree), path
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not {"pick_device", "runtime", "resolve_dtype"} & defined, path
    for path in ("mixerbench/prepare.py", "mixerbench/evaluate.py", "mixerbench/bench.py"):
        assert "choose" in _called(trees[path]), path


def test_choose_defaults_and_refusals_on_this_machine():
    import torch

    from mixerbench.errors import UserError
    from mixerbench.runtime import choose

    if torch.cuda.is_available():
        pytest.skip("the defaults checked here are a CPU machine's")
    assert choose(None, None) == ("cpu", "fp32")
    assert choose("cpu", "auto", local_rank=1) == ("cpu", "fp32")  # the config's "auto"
    assert choose("CPU", "float32") == ("cpu", "fp32")
    with pytest.raises(UserError, match="no CUDA GPU"):
        choose("cuda", None)
    with pytest.raises(UserError, match="Unknown dtype"):
        choose("cpu", "fp8")
    # training and evaluation run in fp32 on any CPU; only bench may time bf16 on one
    with pytest.raises(UserError, match="only used on CUDA here"):
        choose("cpu", "bf16", local_rank=0)


def test_training_never_runs_in_fp16_without_loss_scaling():
    """fp16 gradients underflow without loss scaling, which the training loop does not do: where
    fp16 would be chosen for training it is refused when asked for (the default falls back to
    fp32 on a GPU without bf16). Checked on a CPU with native fp16 units, where the rule is the
    same one a pre-bf16 GPU meets."""
    import torch

    from mixerbench.errors import UserError
    from mixerbench.runtime import choose

    if torch.cuda.is_available() or not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        pytest.skip("needs a CPU with native fp16 units and no GPU")
    assert choose("cpu", "fp16", cpu_half=True) == ("cpu", "fp16")  # bench may time it
    with pytest.raises(UserError, match="loss scaling"):
        choose("cpu", "fp16", cpu_half=True, training=True)


def _declared_events() -> dict[str, str]:
    """event name -> the module whose `Event` class declares it."""
    out = {}
    for path, tree in _modules().items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Event":
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
                        assert stmt.value.value not in out, f"{stmt.value.value} declared twice"
                        out[stmt.value.value] = path
    return out


def test_every_rendered_event_is_declared_by_its_emitting_module_and_vice_versa():
    from mixerbench.view import ProgressView

    declared = _declared_events()
    rendered = set(ProgressView(quiet=True)._handlers())
    assert rendered == set(declared), (rendered ^ set(declared))
    assert set(declared.values()) >= {"mixerbench/train.py", "mixerbench/launch.py"}


def test_no_event_is_named_by_a_bare_string():
    """Events are emitted (`log("...", info)`) and compared (`event == "..."`) only through the
    declared constants, so a renamed event cannot silently stop being shown or recorded."""
    declared = set(_declared_events())
    bare = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name == "log" and isinstance(node.args[0].value, str):
                    bare.append(f"{path}:{node.lineno} log({node.args[0].value!r})")
            if isinstance(node, ast.Compare) and getattr(node.left, "id", "") == "event":
                for c in node.comparators:
                    if isinstance(c, ast.Constant) and c.value in declared:
                        bare.append(f"{path}:{node.lineno} event == {c.value!r}")
    assert not bare, bare


def _help(*args: str) -> str:
    import re

    from typer.testing import CliRunner

    from mixerbench.cli import app

    raw = CliRunner().invoke(app, [*args, "--help"], terminal_width=200).output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", raw).split())  # rich's boxes cut lines


def test_help_lists_exactly_what_the_registries_hold():
    """`plot --help` names each entry of report.REPORTS with its paper artifact, `reproduce
    --help` each of experiments.EXPERIMENTS, `paper --help` each reference table: no list
    copied by hand that could drift from what the command accepts."""
    import re

    from mixerbench.experiments import EXPERIMENTS
    from mixerbench.reference import TABLES
    from mixerbench.report import REPORTS

    listed = _help("plot").split(" Names: ", 1)[1].split(". ", 1)[0]
    entries = [e.split(": ", 1) for e in listed.rstrip(".").split("; ")]
    assert [name for name, _ in entries] == list(REPORTS)
    assert all(text == REPORTS[name].paper for name, text in entries)
    choices = re.search(r"artifact <str> (.*?) \[required\]", _help("reproduce")).group(1)
    assert choices.split(" | ") == list(EXPERIMENTS)
    tables = re.search(r"table <str> (.*?) \[default", _help("paper")).group(1)
    assert tables.split(" | ") == list(TABLES)
    # the top-level help stays a sentence per command, without importing the registries
    top = _help()
    assert "Names:" not in top and "<out>/figures/" in top


# What a command may import besides its one library function: parsers of its options, and
# the view that turns a returned table into the columns it prints.
PARSERS = {"parse_set", "parse_trackers", "writable_results_dir", "results_dir", "compare_view"}
# Second steps a command takes on purpose, each for a reason its code states.
SECOND_STEPS = {
    "export_cmd": {"push"},  # the upload follows a complete export, which a failed push keeps
    "pretrain": {"describe"},  # --list-presets: no run
    "claims": {"to_markdown", "write_markdown_section"},  # --write-md: also into a document
}


def test_commands_parse_call_one_library_function_and_print():
    """Each `mixerbench` command (with the private helper it delegates to) calls one library
    function: no figures redrawn, trackers recorded or rows reshaped in cli.py."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}

    def library_names(f: ast.FunctionDef) -> set[str]:
        names = {a.name for n in ast.walk(f) if isinstance(n, ast.ImportFrom)
                 and (n.module or "").startswith("mixerbench") for a in n.names}
        for called in _called(f) & set(functions) - {f.name}:
            if called.startswith("_") and called not in ("_run", "_launcher", "_rank0"):
                names |= library_names(functions[called])  # a helper the command delegates to
        return names

    commands = [f for f in functions.values()
                if any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
                       for d in f.decorator_list)]
    assert len(commands) >= 10
    too_many = {}
    for f in commands:
        work = library_names(f) - PARSERS - SECOND_STEPS.get(f.name, set())
        if len(work) != 1:
            too_many[f.name] = sorted(work)
    assert not too_many, too_many


def test_test_helpers_are_defined_once_in_conftest():
    """The CLI runner, the refusal check, the tiny run's options and the folder snapshot live in
    tests/conftest.py; a test module imports them instead of keeping a copy that drifts."""
    helpers = {"cli", "_cli", "refused", "one_line_error", "tree", "TINY", "TINY_MODEL", "ENV"}
    copies = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            names = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                     [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
            copies += [f"{path.name}:{node.lineno} {n}" for n in names if n in helpers]
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("test_"):
                copies += [f"{path.name}:{node.lineno} {a.name} from {node.module}"
                           for a in node.names if a.name in helpers]
    assert not copies, copies
    conftest = {n.name for n in ast.parse((ROOT / "tests" / "conftest.py").read_text()).body
                if isinstance(n, ast.FunctionDef)}
    assert {"cli", "refused", "tree", "start"} <= conftest
