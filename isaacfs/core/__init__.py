"""The core: paths, errors (the one errno table), types and the Upstream protocol, the
namespace, the visibility policy, listings, categories. It imports neither pyfuse3, nor
omni.client, nor argparse or rich (tests/unit/test_boundary.py checks)."""
