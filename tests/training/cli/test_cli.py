import subprocess
import sys

from click.testing import CliRunner

from tests.training.pairs import DATA, REPO
from training.cli import main

HEAVY = ("torch", "transformers", "mlflow", "azure", "datasets", "peft")


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from training.cli import main\n"
        "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _commands(group, path=()):
    import click

    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_every_command_has_help_that_documents_its_options():
    """Every command, found by walking the CLI (a new one is covered without editing this test):
    --help exits 0, says what the command does, and lists every option it takes with its help."""
    runner = CliRunner()
    commands = list(_commands(main))
    assert {("run",), ("data", "validate"), ("submit",), ("compare",)} <= {p for p, _ in commands}
    for path, command in commands:
        result = runner.invoke(main, [*path, "--help"], prog_name="train", terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith(f"Usage: train {' '.join(path)} "), result.output
        summary = (command.help or command.short_help or "").strip().splitlines()
        assert summary and summary[0].split()[0] in result.output, f"{path}: no description"
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for flag in getattr(param, "opts", []):
                if flag.startswith("-"):
                    assert flag in result.output, f"train {' '.join(path)} --help lacks {flag}"
            if getattr(param, "help", None) is not None:
                assert param.help, f"train {' '.join(path)}: {param.name} has an empty help"


def test_data_validate_good_files_exit_0(tiny_model_path):
    result = CliRunner().invoke(main, ["data", "validate", str(DATA / "control.jsonl"),
                                       str(DATA / "eval.jsonl"), "--max-seq-length", "256"])
    assert result.exit_code == 0, result.output
    assert "control.jsonl" in result.output


def test_data_validate_config_alone_honours_max_seq_length(tiny_model_path):
    """--config without PATHS checks the file's data: --max-seq-length still wins."""
    config = str(DATA.parents[1] / "experiments" / "local.yaml")
    result = CliRunner().invoke(main, ["data", "validate", "--config", config,
                                       "--max-seq-length", "40"])
    assert result.exit_code == 2, result.output
    assert "over max_seq_length 40" in result.output


def test_data_validate_bad_file_exit_2_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}, '
                   '{"role": "assistant", "content": "y"}]}\n{oops\n')
    result = CliRunner().invoke(main, ["data", "validate", str(bad), "--no-tokenizer"])
    assert result.exit_code == 2
    assert f"{bad}:2:" in result.output


def test_run_with_missing_config_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "cannot read experiment file" in result.output
