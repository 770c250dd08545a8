"""`python -m devstack`: the whole stack on this machine (as `python -m starter dev`)."""

from devstack.run import main

if __name__ == "__main__":
    raise SystemExit(main())
