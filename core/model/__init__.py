"""The model and what is stored with it: the network, test-time views, validity statistics, its folder, the Hub."""
