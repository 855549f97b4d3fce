"""Real arms without ROS: arm files, drivers, cameras, safety, the control loop and the policy server.

Nothing here imports the training stack; torch is imported only where a policy is loaded (`deploy --policy`,
`vla serve`), which runs it through the policy runtime (vla.policies.runtime.PolicyPlanner).
"""
