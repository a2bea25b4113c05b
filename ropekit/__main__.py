from ropekit.cli import run

run()
