"""Building blocks shared by several policies: MoE layers and routers, denoising objectives, encoders."""
