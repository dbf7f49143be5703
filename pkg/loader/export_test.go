package loader

// CreateLBHealth is createLBHealth, for the tests.
var CreateLBHealth = createLBHealth
