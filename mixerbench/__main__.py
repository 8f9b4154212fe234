from mixerbench.cli import app

app(prog_name="mixerbench")
