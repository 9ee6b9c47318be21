def main(argv=None):
    raise SystemExit("data-prep: not implemented yet")
