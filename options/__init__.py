"""Command-line options, pix2pix style: BaseOptions -> TrainOptions / TestOptions, plus DemoOptions."""
