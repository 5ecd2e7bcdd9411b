"""Install a packaged model (a shipped teacher, or one trained elsewhere) as an exp dir that every
later stage loads like one trained here: checks each file's sha256 first, writes float32 model.pth.

    python -m kdtool.bin.install_model --package teachers/ar_teacher --exp_dir exp/ar_teacher
"""
import argparse
import logging

from kdtool.bin._common import run_main
from kdtool.models.package import install


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", required=True, help="a dir made by kdtool.bin.pack_model")
    p.add_argument("--exp_dir", required=True)
    args = p.parse_args()
    info = install(args.package, args.exp_dir)
    logging.info("%s: %s model, %d parameters, from %s (sha256 checked)", args.exp_dir, info["kind"], info["params"],
                 args.package)


if __name__ == "__main__":
    run_main(main)
