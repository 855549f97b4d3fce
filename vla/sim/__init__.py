"""Simulation backends (LIBERO, CALVIN) behind one small environment interface."""
