"""Real arms without ROS: robot interface, drivers, cameras, safety layer, control loop, policy server.

This layer must not import the training stack (torch models, trainers).
"""
