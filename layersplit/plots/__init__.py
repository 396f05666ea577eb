"""The drawing code of figures.py (which stays the command line), one module per area:

    common    the output format, shared styles, the readers of result files, save()
    channel   ber_per, latency            (python -m layersplit.channel)
    sweep     sweep, snr                  (add_noise.py --sweep)
    rl        rsm_fit, training, policy, cost   (train_rsm.py, train.py)
    protect   protect                     (add_noise.py --sweep --protects)
    nr        nr_bler, nr_snr             (python -m layersplit.nr, add_noise.py --sweep --link nr)

Each figure is a function (results_dir, figures_dir) -> the PNG's path; the result files it reads and
how they are made are named at the top of its module. matplotlib is imported only when one draws.
"""
