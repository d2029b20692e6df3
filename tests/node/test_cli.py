import subprocess
import sys

from tests.conftest import run_hearth as hearth


def test_bad_arguments_give_one_line_errors_not_tracebacks():
    for args in (["join", "ftp://nowhere"], ["join", "http://127.0.0.1:9", "--threads", "0"]):
        result = hearth(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "Error:" in result.stderr


def test_unreachable_coordinator_is_retried_then_explained(tmp_path):
    result = hearth("join", "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--connect-timeout", "2")
    assert result.returncode == 2
    assert "retrying" in result.stderr
    assert "cannot reach the coordinator at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_node_commands_do_not_load_the_web_stack():
    code = "import sys; from hearth.cli import cli; cli.get_command(None, 'node'); cli.get_command(None, 'join');" \
           "print(any(m in sys.modules for m in ('fastapi', 'uvicorn', 'sqlalchemy', 'amqtt', 'torch')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
