"""latpred: predict the inference latency of DNN modules and models on real devices."""
