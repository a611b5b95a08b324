/* The `tessera` command: one function per subcommand. */
#ifndef TESSERA_CLI_H
#define TESSERA_CLI_H

int cmd_devices(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_classify(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_plot(int argc, char **argv);


#endif
