from tunefork.cli import run

run()
