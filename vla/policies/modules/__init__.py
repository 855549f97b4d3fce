"""Building blocks shared by several policies: attention, the conditioning encoder, MoE layers and routers, the
generative objectives (EDM, flow matching) behind one interface, the mixture of horizons, encoders."""
