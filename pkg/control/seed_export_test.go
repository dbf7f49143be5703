package control

// RunningHashSeed is runningHashSeed for the tests of package control_test.
var RunningHashSeed = runningHashSeed
