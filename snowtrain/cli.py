def main(argv=None):
    raise SystemExit("snowtrain: not implemented yet")
