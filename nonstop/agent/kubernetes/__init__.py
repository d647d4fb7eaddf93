"""The kubernetes runtime: nonstop's strategies driving Deployments, Services and HTTPRoutes in a cluster."""
